"""`python -m runtime.train`: what DeepSpeed's launcher runs in each rank (`--module runtime.train`)."""

from runtime.common.log import exit_now
from runtime.train.command import main

# A rank that returned has closed every file it wrote and torn its process group down: leave
# without unloading torch and DeepSpeed (about 1 s per rank, while the job waits for the slowest).
exit_now(main())
