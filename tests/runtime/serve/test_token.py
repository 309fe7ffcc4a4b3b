"""Token files that must be refused (at start-up and on SIGHUP) without the token reaching a log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from runtime.serve.auth import TokenError, load_token
from tests.runtime.serve.conftest import MODEL, REPO_ROOT

SECRET = "Zq7secret0token0value0Xk93" * 2  # distinctive, so any copy of it in a log is found


def _variants(token: str) -> list[bytes]:
    """The token as it could appear in a log line: plain, UTF-16 (as repr'd bytes), hex."""
    utf16 = token.encode("utf-16-le")
    return [token.encode(), utf16, repr(utf16).encode()[2:-1], token.encode().hex().encode(), token[:12].encode()]


# (name, file bytes, mode, message fragment)
BAD_FILES = [
    ("utf16-bom", "\ufeff".encode("utf-16-le") + SECRET.encode("utf-16-le"), 0o600, "byte-order mark"),
    ("utf8-bom", b"\xef\xbb\xbf" + SECRET.encode(), 0o600, "byte-order mark"),
    ("not-utf8", SECRET.encode() + b"\xff\xfe\x00", 0o600, "not UTF-8"),
    ("group-readable", SECRET.encode(), 0o640, "group or others"),
    ("other-writable", SECRET.encode(), 0o602, "group or others"),
    ("world-readable", SECRET.encode(), 0o604, "world-readable"),
    ("too-short", b"short-token\n", 0o600, "at least 16"),
    ("inner-space", (SECRET[:20] + " " + SECRET[20:]).encode(), 0o600, "characters other than"),
    ("non-ascii", (SECRET + "\u00e9").encode(), 0o600, "characters other than"),
    ("too-large", b"a" * 5000, 0o600, "larger than 4096"),
]


@pytest.mark.parametrize(("content", "mode", "message"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_token_file_is_refused_without_its_bytes(tmp_path, content, mode, message):
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(TokenError, match=message) as info:
        load_token(str(path), None, environ={})
    text = str(info.value).encode()
    assert not any(v in text for v in _variants(SECRET)), text


def test_token_file_with_final_newline_is_fine(tmp_path):
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    path.chmod(0o400)
    assert load_token(str(path), None, environ={})[0] == SECRET


def test_start_up_refuses_a_bom_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbf" + SECRET.encode())
    path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "STRATUS_SERVE_TOKEN"}
    cmd = [sys.executable, "-m", "runtime", "serve", "--repo", str(tmp_path), "--model", MODEL, "--port", "1"]
    cmd.append("--insecure-plain-http")
    proc = subprocess.run([*cmd, "--token-file", str(path)], cwd=REPO_ROOT, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert b"byte-order mark" in proc.stderr
    assert not any(v in proc.stderr + proc.stdout for v in _variants(SECRET))


def test_sighup_with_bad_files_keeps_the_token_and_never_logs_it(server):
    """Each bad file on SIGHUP: refused, logged without its bytes, the current token keeps working.
    Then every line the server logged in this session is searched for the tokens."""
    original = server.token_file.read_bytes()
    try:
        for name, content, mode, message in BAD_FILES:
            server.token_file.write_bytes(content)
            server.token_file.chmod(mode)
            before = server.log_path.read_text().count("token reload failed")
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for(
                lambda before=before: server.log_path.read_text().count("token reload failed") > before, name
            )
            failures = [line for line in server.log_path.read_text().splitlines() if "token reload failed" in line]
            assert message in failures[-1], (name, failures[-1])
            assert httpx.get(f"{server.url}/v2", headers=server.auth, timeout=5).status_code == 200, name
    finally:
        server.token_file.write_bytes(original)
        server.token_file.chmod(0o600)
    logged = server.log_path.read_bytes()
    for token in (SECRET, server.token):
        for variant in _variants(token):
            assert variant not in logged, f"a form of the token is in the log: {variant[:8]!r}..."
