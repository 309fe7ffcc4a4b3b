"""`python -m stratus.simserve DIR`: the same as `python -m sim.serve DIR` (`scripts/sim-stack.sh serve DIR`)."""

import sys

from sim.serve import main

if __name__ == "__main__":
    sys.exit(main())
