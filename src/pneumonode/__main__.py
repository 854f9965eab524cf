"""``python -m pneumonode``: the command line."""

import sys

from pneumonode.cli import main

sys.exit(main())
