"""``python -m engine`` is ``signal-engine``."""

import sys

from .cli.main import main

sys.exit(main())
