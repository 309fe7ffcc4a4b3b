"""Training on a stack's nodes through SSM Run Command, and the checkpoint sync the nodes run.

Command: `runtime.remote.command` (`stratus remote`); on the nodes: `python -m runtime.remote.sync`
(the entry of `runtime.checkpoint.s3`) and `python -m runtime.remote.publish`.
"""
