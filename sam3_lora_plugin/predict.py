"""``python -m sam3_lora_plugin.predict``: run a base or adapted SAM3 on images; COCO results and overlays.

The entry point only; the code is ``sam3_lora_plugin.cli.predict``.
"""

import sys

from sam3_lora_plugin.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
