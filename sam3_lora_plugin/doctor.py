"""``python -m sam3_lora_plugin.doctor``: check the install, a config, its datasets and checkpoints before a run.

The entry point only; the code is ``sam3_lora_plugin.cli.doctor``.
"""

import sys

from sam3_lora_plugin.cli.doctor import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
