"""The pack itself: `policy/__main__.py` builds a PolicyPack from the rules and serves it."""

from __future__ import annotations

import subprocess
import sys

import yaml

from infra.tools.policycheck import POLICY_DIR


def test_pack_starts_its_analyzer_like_the_pulumi_cli_runs_it():
    # The CLI runs the pack directory with runpy, `policy/` on sys.path; the pack prints the
    # port of its gRPC analyzer and serves until killed.
    code = f"import runpy; runpy.run_path({str(POLICY_DIR)!r}, run_name='__main__')"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=POLICY_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        line = proc.stdout.readline().decode().strip()
        assert line.isdigit(), proc.stderr.read().decode() if proc.poll() is not None else line
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_pack_project_file_uses_the_repository_venv():
    spec = yaml.safe_load((POLICY_DIR / "PulumiPolicy.yaml").read_text())
    assert spec["runtime"]["name"] == "python"
    assert (POLICY_DIR / spec["runtime"]["options"]["virtualenv"] / "bin").is_dir()
