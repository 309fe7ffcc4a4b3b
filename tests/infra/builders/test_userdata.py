"""User data of the hosts, as pure functions of names."""

from __future__ import annotations

from infra.builders import userdata
from runtime.contract import HOST_PYTHON, PREPARE_UNIT, SCRATCH_MOUNT, bundle_uri, model_repository_uri


def test_trainer_user_data_mounts_scratch_and_installs_the_bundle():
    text = userdata.trainer_user_data(region="us-east-1", buckets={"models": "m", "datasets": "d"}, scratch=True)
    assert "mkfs.xfs -q /dev/sdf" in text and "s3://m/runtime/stratus-runtime.tar.gz" in text
    assert "STRATUS_DATASETS_BUCKET=d" in text
    assert "/dev/sdf" not in userdata.trainer_user_data(region="us-east-1", buckets={"models": "m"}, scratch=False)


def test_user_data_follows_the_runtime_contract():
    trainer = userdata.trainer_user_data(region="us-east-1", buckets={"models": "m"}, scratch=True)
    server = userdata.serving_user_data(
        region="us-east-1", models_bucket="m", model_name="mlp-binary", port=8000, token_parameter="/s/dev/token"
    )
    for text in (trainer, server):
        assert bundle_uri("m") in text
        assert f"/etc/systemd/system/{PREPARE_UNIT} " in text and f"--no-block {PREPARE_UNIT}" in text
    assert f" {SCRATCH_MOUNT} xfs " in trainer
    assert f"exec {HOST_PYTHON} -m runtime serve" in server and f"--repo {model_repository_uri('m')} " in server
