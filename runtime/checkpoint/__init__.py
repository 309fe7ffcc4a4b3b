"""A run's checkpoints, on disk and in S3: one package, one concern per module.

    local     the layout, the manifest, verification, newest-verified, retention (files only)
    commit    the collective commit and restore around DeepSpeed, RNG state, test hooks
    s3        each node's shards and part record, node 0's merged manifest, `latest`, retention
    stream    the uploader thread beside training (after every commit)
    download  one tag or the newest verified one back from S3, the fetch before `--resume`

It sits between `runtime.common` (and `runtime.contract`) and the stages that use it (train,
export, remote) and imports neither of those. A run's checkpoints in S3 are
`runtime.contract.checkpoints_uri(bucket, run)`; the node-side entry of the sync after training
is `python -m runtime.checkpoint.sync`.
"""
