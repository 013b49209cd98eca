"""``python -m sam3_lora_plugin.data.check PATH``; see ``--help``."""

from .cli import main

raise SystemExit(main())
