"""`python -m runtime.remote`: `stratus remote` without `--sim-dir` (the simulator is not in the runtime)."""

import sys

from runtime.remote.command import main

sys.exit(main())
