"""Publish a verified artifact into a model repository (the library half of `stratus publish`).

Layout written (Triton/KServe model repository; docs/architecture.md):

    <repo>/<model>/<N>/model.onnx, manifest.json, ...   N = 1 + the highest existing version
    <repo>/<model>/config.pbtxt                          from the manifest's inputs/outputs
    <repo>/<model>/LATEST                                "N\\n", written last

Order of operations, so that a failed or interrupted publish never moves `LATEST`:
verify the staged artifact -> upload every file (manifest last) -> verify what landed (size +
sha256; on S3 by reading each object back, and checking SSE-KMS) -> config.pbtxt -> LATEST.
On any failure the new version's files are removed (best effort) and `LATEST` is untouched.

One publisher per model at a time: versions are claimed with an exclusive mkdir locally, but S3
has no such primitive here, so concurrent S3 publishers of one model could race on N.
"""

from __future__ import annotations

import logging
from pathlib import Path

from runtime.common.fsutil import sha256_file
from runtime.contract import MODEL_FILE, model_name_problem
from runtime.repository.artifact import MANIFEST, ArtifactError, config_pbtxt, verify_artifact
from runtime.repository.store import Repo, open_repo

log = logging.getLogger("stratus.publish")


def check_model_name(model_name: str) -> str:
    """Return `model_name` if it follows the model-name rule of `runtime.contract`, else raise ValueError."""
    problem = model_name_problem(model_name)
    if problem:
        raise ValueError(problem)
    return model_name


def read_latest(repo: str, model_name: str) -> int | None:
    """The version `<repo>/<model_name>/LATEST` points to, or None if nothing is published.

    Raises:
        PublishError: LATEST exists but does not hold a positive integer.
    """
    return open_repo(repo).read_latest(check_model_name(model_name))


def _upload_version(store: Repo, staged: Path, model_name: str, manifest: dict) -> int:
    """Claim a new version, upload and verify every file (manifest last); return the version.

    On failure the claimed version is removed (best effort) and the error propagates."""
    # Payload files first, manifest last: a listing never shows a manifest whose files are
    # still arriving.
    files = sorted(manifest["files"]) + [MANIFEST]
    expected = dict(manifest["files"])
    sha, size = sha256_file(staged / MANIFEST)
    expected[MANIFEST] = {"sha256": sha, "size": size}
    version = store.claim_version(model_name)
    try:
        for rel in files:
            store.put_file(f"{model_name}/{version}/{rel}", staged / rel)
        for rel in files:
            store.verify_object(f"{model_name}/{version}/{rel}", **expected[rel])
    except BaseException:
        store.delete_version(model_name, version)
        raise
    return version


def publish(staged_dir: Path | str, repo: str, *, model_name: str, kms_key_id: str | None = None) -> int:
    """Publish the version directory `staged_dir` as a new version of `model_name` in `repo`.

    Args:
        staged_dir: a version directory (model.onnx + manifest.json) that verifies.
        repo: a local directory or `s3://bucket/prefix`.
        model_name: the model's name in the repository.
        kms_key_id: KMS key (id or ARN) for SSE-KMS on S3; None uses the bucket's aws:kms default.

    Returns:
        The new version number N; `<repo>/<model_name>/LATEST` now holds N.

    Raises:
        ArtifactError: the staged artifact does not verify or has no model.onnx.
        ValueError: a bad model name, repository URI, or a manifest naming another model.
        PublishError: uploading or verifying what landed failed; LATEST was not changed.
    """
    check_model_name(model_name)
    staged = Path(staged_dir)
    manifest = verify_artifact(staged)
    if MODEL_FILE not in manifest["files"]:
        raise ArtifactError(f"{MODEL_FILE}: missing from the manifest of {staged}; re-export")
    named = manifest.get("model_name")
    if named is not None and named != model_name:
        raise ValueError(
            f"artifact {staged} was exported as model {named!r} but --model is {model_name!r}; "
            f"publish with --model {named} or re-export under the new name"
        )
    if not manifest.get("inputs") or not manifest.get("outputs"):
        raise ArtifactError(f"{MANIFEST}: needs 'inputs' and 'outputs' tensor specs; re-export")
    pbtxt = config_pbtxt(model_name, manifest["inputs"], manifest["outputs"]).encode()
    store = open_repo(repo, kms_key_id=kms_key_id)
    version = _upload_version(store, staged, model_name, manifest)
    store.put_bytes(f"{model_name}/config.pbtxt", pbtxt)
    store.write_latest(model_name, version)
    log.info("published %s version %d to %s", model_name, version, repo)
    return version
