"""``python -m texwatch.daemon`` is ``texwatchd``."""

import sys

from . import main

sys.exit(main())
