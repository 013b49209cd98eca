"""``python -m sam3_lora_plugin.train``: SAM3's launcher plus Hydra command-line overrides.

The entry point only; the code is ``sam3_lora_plugin.cli.train``.
"""

import sys

from sam3_lora_plugin.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
