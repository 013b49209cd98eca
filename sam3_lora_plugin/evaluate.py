"""``python -m sam3_lora_plugin.evaluate``: base vs adapter on a validation split, through SAM3's own evaluator.

The entry point only; the code is ``sam3_lora_plugin.cli.evaluate``.
"""

import sys

from sam3_lora_plugin.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
