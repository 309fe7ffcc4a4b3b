"""`python -m runtime COMMAND ...`: the runtime's commands (see runtime.cli)."""

import sys

from runtime.cli import main
from runtime.common.log import exit_now

if __name__ == "__main__":
    code = main()
    if sys.argv[1:2] == ["train"]:
        # DeepSpeed's launcher has returned, the ranks are gone and every file is written and
        # closed: leave without the interpreter's teardown of torch (about 1 s per launch).
        exit_now(code)
    sys.exit(code)
