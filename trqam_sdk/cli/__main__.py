"""``python -m trqam_sdk.cli`` (what torchrun and accelerate launch run)."""

import sys

from trqam_sdk.cli import main

sys.exit(main())
