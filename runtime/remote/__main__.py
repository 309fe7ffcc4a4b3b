"""`python -m runtime.remote`: the same as `stratus remote` (scripts/launch.sh --stack runs it)."""

import sys

from runtime.remote.command import main

sys.exit(main())
