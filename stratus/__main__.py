"""`python -m stratus ...`: the same as the `stratus` console script."""

import sys

from stratus.cli import main

sys.exit(main())
