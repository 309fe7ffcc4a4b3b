"""Training on a stack's nodes through SSM Run Command.

Command: `runtime.remote.command` (`stratus remote`); on the nodes, after DeepSpeed's per-node
launcher: `python -m runtime.checkpoint.sync` (checkpoints to S3) and, on node 0 with `--export`,
`python -m runtime.remote.publish`.
"""
