"""`python -m runtime COMMAND ...`: the runtime's commands (see runtime.cli)."""

import sys

from runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
