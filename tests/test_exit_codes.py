"""The exit-code table: docs/architecture.md prints `runtime.contract`'s, and every command returns
each code it lists, from a real scenario (in process where the command allows it).

Commands run through their `main(argv)` with real inputs: real checkpoints, artifacts, the moto
server for AWS. Only `remote`'s 75 and 130 are reached at the function that decides them (a node
preempted needs real nodes; 130 needs a Ctrl-C during polling, which moto answers at once).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runtime.contract import COMMAND_EXIT_CODES, ExitCode
from tests.conftest import free_port
from tests.layout import ROOT
from tests.runtime.remote.conftest import stack  # noqa: F401 (a fixture)
from tests.support import build_artifact


def _code(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """`main(argv)`, with argparse's usage errors (SystemExit) as their code."""
    try:
        return int(main(argv))
    except SystemExit as e:
        return int(e.code)


def test_the_documented_table_is_the_contract():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| .+ \| ([a-z, ]+) \|$", text, flags=re.M)
    assert [(int(c), n) for c, n, _ in rows] == [(c.value, c.name) for c in ExitCode]
    for code, _, commands in rows:
        documented = {name.strip() for name in commands.split(",")}
        expected = {cmd for cmd, codes in COMMAND_EXIT_CODES.items() if int(code) in codes}
        assert documented == expected, f"exit code {code}"


# --- one scenario per (command, code) ------------------------------------------------------------


def train(code: ExitCode, tmp_path: Path, request) -> int:
    from runtime.train.command import main

    common = ["--run-name", "r", "--set", f"output_dir={tmp_path}", "--set", "data.num_samples=200"]
    if code == ExitCode.OK:
        return _code(main, [*common, "--dry-run"])
    if code == ExitCode.BAD_INPUT:
        return _code(main, [*common, "--set", "epochs=0"])
    if code == ExitCode.NO_CHECKPOINT:
        return _code(main, [*common, "--resume"])
    returncode, _, _ = request.getfixturevalue("preempted_run")  # PREEMPTED: SIGTERM to real ranks
    return returncode


def export(code: ExitCode, tmp_path: Path, request) -> int:
    from runtime.export.command import main
    from tests.runtime.export.test_pipeline import make_stage0_run

    if code == ExitCode.NO_CHECKPOINT:
        return _code(main, ["--run-dir", str(tmp_path / "never-trained")])
    if code == ExitCode.BAD_INPUT:
        return _code(main, ["--run-dir", str(tmp_path), "--sparsity", "1.5"])
    run_dir, _ = make_stage0_run(tmp_path / "run", steps=20)
    argv = ["--run-dir", str(run_dir), "--latency-iters", "2", "--finetune-steps", "5"]
    if code == ExitCode.GATE_FAILED:
        return _code(main, [*argv, "--tolerance", "-100"])
    argv += ["--tolerance", "100"]  # the gate is not what these two scenarios are about
    if code == ExitCode.FAILED:  # the gate passes, then the repository's bucket does not exist
        request.getfixturevalue("aws_env")
        return _code(main, [*argv, "--publish", "s3://no-such-bucket-stratus/models"])
    return _code(main, argv)


def publish(code: ExitCode, tmp_path: Path, request) -> int:
    from runtime.repository.command import main

    artifact = build_artifact(tmp_path / "artifact", model_name="tiny")
    argv = ["--artifact", str(artifact), "--model", "tiny", "--repo"]
    if code == ExitCode.BAD_INPUT:
        return _code(main, [*argv, str(tmp_path / "repo"), "--model", "other"])  # exported as "tiny"
    if code == ExitCode.FAILED:
        request.getfixturevalue("aws_env")
        return _code(main, [*argv, "s3://no-such-bucket-stratus/models"])
    return _code(main, [*argv, str(tmp_path / "repo")])


def serve(code: ExitCode, tmp_path: Path, request) -> int:
    from runtime.serve.command import main

    if code == ExitCode.BAD_INPUT:
        return _code(main, ["--repo", str(tmp_path), "--model", "tiny", "--insecure-plain-http"])  # no token source
    token = tmp_path / "token"
    token.write_text("exit-code-token-0123456789abcdef")
    token.chmod(0o600)
    cmd = [
        sys.executable,
        "-m",
        "runtime",
        "serve",
        "--repo",
        str(tmp_path),
        "--model",
        "tiny",
        "--port",
        str(free_port()),
        "--token-file",
        str(token),
        "--insecure-plain-http",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while "serving tiny" not in (line := proc.stdout.readline()):
            assert line and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()


def remote(code: ExitCode, tmp_path: Path, request, monkeypatch) -> int:
    from runtime.remote import command

    if code == ExitCode.PREEMPTED:
        return command.report(
            [{"Status": "Success", "ResponseCode": 0}, {"Status": "Failed", "ResponseCode": 75}],
            run_name="r",
            out=lambda s: None,
        )
    if code == ExitCode.BAD_INPUT:
        return _code(command.main, ["--outputs-file", str(tmp_path / "missing.json")])
    outputs, path = request.getfixturevalue("stack")
    train_args = ["--", "--run-name", f"exit{int(code)}", "--set", "data.num_samples=400"]
    if code == ExitCode.FAILED:  # the bundle's bucket does not exist
        path.write_text(path.read_text().replace(outputs["models_bucket"], "no-such-bucket-stratus"))
    if code == ExitCode.INTERRUPTED:

        def ctrl_c(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(command, "wait_for_nodes", ctrl_c)
    return _code(command.main, ["--outputs-file", str(path), "--poll-interval", "0.05", *train_args])


def sync(code: ExitCode, tmp_path: Path, request) -> int:
    from runtime.checkpoint.sync import main
    from tests.runtime.checkpoint.test_sync import make_tag

    argv = ["--run-dir", str(tmp_path), "--kms-key-id", "arn:aws:kms:us-east-1:1:key/k", "--prefix", "r/"]
    if code == ExitCode.BAD_INPUT:
        return _code(main, [*argv, "--bucket", "b", "--node-rank", "2", "--num-nodes", "2"])
    if code == ExitCode.OK:
        return _code(main, [*argv, "--bucket", "b"])  # nothing committed: nothing to sync
    request.getfixturevalue("aws_env")
    make_tag(tmp_path / "checkpoints", 2, [0, 1], commit=True)
    return _code(main, [*argv, "--bucket", "no-such-bucket-stratus"])


def plan(code: ExitCode, tmp_path: Path, request, monkeypatch) -> int:
    from infra.tools import plan as plan_tool
    from tests.infra.support import EXAMPLE, with_unrotated_key

    if code == ExitCode.BAD_INPUT:
        bad = tmp_path / "Pulumi.bad.yaml"
        bad.write_text(EXAMPLE.read_text().replace("stratus:trainer-count: 2", "stratus:trainer-count: 0"))
        assert bad.read_text() != EXAMPLE.read_text()
        return _code(plan_tool.main, [str(bad)])
    if code == ExitCode.FAILED:  # the key of the planned stack does not rotate: a policy rule fails
        monkeypatch.setattr(plan_tool, "run_program", with_unrotated_key(plan_tool.run_program))
    return _code(plan_tool.main, [str(EXAMPLE)])


def model(code: ExitCode, tmp_path: Path, request) -> int:
    import boto3
    import torch
    from safetensors.torch import save_file

    from stratus.model import main

    request.getfixturevalue("aws_env")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    if code != ExitCode.BAD_INPUT:  # BAD_INPUT: no config.json
        (model_dir / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(model_dir / "model.safetensors"))
    (model_dir / "tokenizer.json").write_text("{}")
    bucket = f"stratus-model-{tmp_path.name.lower()[-20:]}"
    if code == ExitCode.OK:  # FAILED: the bucket does not exist
        boto3.client("s3").create_bucket(Bucket=bucket)
    return _code(main, ["push", str(model_dir), "--bucket", bucket])


def wheels(code: ExitCode, tmp_path: Path, request) -> int:
    from runtime.remote.wheels import main

    if code == ExitCode.BAD_INPUT:
        return _code(main, ["--requirements", str(tmp_path / "missing.txt")])
    if code == ExitCode.OK:
        return _code(main, ["--dest", str(tmp_path / "w"), "--dry-run"])
    failing_pip = tmp_path / "python"  # FAILED: pip exits 1 (no wheel of the pin for the nodes)
    failing_pip.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for deepspeed==0.19.8'\nexit 1\n")
    failing_pip.chmod(0o755)
    return _code(main, ["--dest", str(tmp_path / "w"), "--python", str(failing_pip)])


SCENARIOS = {
    "train": train,
    "export": export,
    "publish": publish,
    "serve": serve,
    "remote": remote,
    "sync": sync,
    "plan": plan,
    "model": model,
    "wheels": wheels,
}
PAIRS = [(cmd, code) for cmd, codes in COMMAND_EXIT_CODES.items() for code in codes]


def test_every_command_has_a_scenario():
    assert set(SCENARIOS) == set(COMMAND_EXIT_CODES)


@pytest.mark.parametrize(("command", "code"), PAIRS, ids=[f"{cmd}-{code.name}" for cmd, code in PAIRS])
def test_command_returns_the_code(command, code, tmp_path, request, monkeypatch):
    scenario = SCENARIOS[command]
    kwargs = {"monkeypatch": monkeypatch} if "monkeypatch" in scenario.__code__.co_varnames else {}
    if code == ExitCode.PREEMPTED and command == "train":
        request.applymarker(pytest.mark.deepspeed)
    assert scenario(code, tmp_path, request, **kwargs) == code
