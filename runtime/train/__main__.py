"""`python -m runtime.train`: what DeepSpeed's launcher runs in each rank (`--module runtime.train`)."""

import sys

from runtime.train.command import main

sys.exit(main())
