"""`python -m runtime COMMAND ...`: the runtime's commands (see runtime.cli)."""

import logging
import os
import sys

from runtime.cli import main

if __name__ == "__main__":
    code = main()
    if sys.argv[1:2] == ["train"]:
        # DeepSpeed's launcher has returned, the ranks are gone and every file is written and
        # closed: leave without the interpreter's teardown of torch (about 1 s per launch).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
