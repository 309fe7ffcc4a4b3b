"""`python -m runtime.remote.publish` (node 0's export from S3) against the moto server: what it
refuses before exporting anything. The full path (a real multi-node checkpoint exported and served)
runs on the simulated stack, tests/sim/test_serving.py."""

from __future__ import annotations

import boto3

from runtime.common.options import parse_options, to_argv
from runtime.contract import ExitCode
from runtime.remote.publish import PublishOptions, export_config, main
from tests.runtime.remote.conftest import REGION


def _args(outputs, *extra):
    return [
        "--run",
        "r1",
        "--checkpoints-bucket",
        outputs["checkpoints_bucket"],
        "--models-bucket",
        outputs["models_bucket"],
        "--kms-key-id",
        outputs["kms_key_arn"],
        *extra,
    ]


def test_no_verified_checkpoint_in_s3_exits_3_and_publishes_nothing(stack, aws_env, tmp_path, caplog):
    outputs, _ = stack
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(
        Bucket=outputs["checkpoints_bucket"],
        Key="r1/global_step4/manifest.json",
        Body=b"{not json",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=outputs["kms_key_arn"],
    )
    s3.put_object(
        Bucket=outputs["checkpoints_bucket"],
        Key="r1/latest",
        Body=b"global_step4",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=outputs["kms_key_arn"],
    )
    assert main(_args(outputs, "--work-dir", str(tmp_path))) == ExitCode.NO_CHECKPOINT
    assert "skipping S3 checkpoint global_step4" in caplog.text
    assert f"no checkpoint in s3://{outputs['checkpoints_bucket']}/r1/ verifies" in caplog.text
    assert s3.list_objects_v2(Bucket=outputs["models_bucket"])["KeyCount"] == 0


def test_bad_names_are_refused_before_any_download(stack, aws_env, tmp_path):
    outputs, _ = stack
    work = tmp_path / "work"
    assert main(_args(outputs, "--model-name", "../x", "--work-dir", str(work))) == ExitCode.BAD_INPUT
    bad_run = _args(outputs, "--work-dir", str(work))
    bad_run[1] = "a/b"
    assert main(bad_run) == ExitCode.BAD_INPUT
    assert not work.exists()


def test_export_publishes_to_the_models_prefix_with_the_stack_key(tmp_path):
    argv = ["--run", "r1", "--checkpoints-bucket", "c", "--models-bucket", "m", "--kms-key-id", "arn:k"]
    opts = parse_options(PublishOptions, [*argv, "--work-dir", str(tmp_path)], prog="t")
    cfg = export_config(opts, "global_step8")  # run in node 0's process, no command line in between
    assert (cfg.run_dir, cfg.checkpoint) == (tmp_path / "r1", "global_step8")
    assert (cfg.publish, cfg.kms_key_id, cfg.model_name) == ("s3://m/models", "arn:k", None)
    assert export_config(parse_options(PublishOptions, [*argv, "--model-name", "n"], prog="t"), "t").model_name == "n"
    # the node's command line is the options' to_argv, and parses back into them
    assert parse_options(PublishOptions, to_argv(opts), prog="t") == opts
