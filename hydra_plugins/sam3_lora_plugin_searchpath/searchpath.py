"""Hydra search-path plugin: makes ``configs/lora/<name>.yaml`` resolvable by SAM3's launcher.

Hydra imports every module under the ``hydra_plugins`` namespace package in every Hydra
app, so this module imports nothing but Hydra itself and the standard library. Importing
it also keeps secret environment values out of SAM3's environment log (``env_redaction``):
this is the earliest point at which our code runs under SAM3's stock launcher.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from hydra_plugins.sam3_lora_plugin_searchpath import env_redaction

env_redaction.install()

PROVIDER = "sam3-lora-plugin"
SEARCH_PATH = "pkg://hydra_configs"


class Sam3LoraSearchPathPlugin(SearchPathPlugin):
    """Appends ``pkg://hydra_configs`` so ``-c configs/lora/x.yaml`` finds our YAML files."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider=PROVIDER, path=SEARCH_PATH)
