"""The local repository's reads of what a writer other than publish may have left: LATEST parsed
strictly and never quoted, symlinked version directories and LATEST files refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.repository.artifact import ArtifactError
from runtime.repository.store import LocalRepo, PublishError

SECRET = "s3cr3t-token-0123456789abcdef0123456789abcdef"


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepo:
    (tmp_path / "repo" / "tiny" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "tiny" / "1" / "model.onnx").write_bytes(b"onnx")
    (tmp_path / "repo" / "tiny" / "LATEST").write_text("1\n")
    return LocalRepo(tmp_path / "repo")


@pytest.mark.parametrize(
    "content",
    [
        "\u00b2".encode(),  # a superscript two: str.isdigit() says yes, int() refuses it
        b"\xc2\xb2\n",
        b"9" * 5000,  # over int()'s digit limit
        b"9" * 19,  # more digits than a version has
        b"0\n",
        b"-1",
        b"+1",
        b" 1 2",
        b"",
        b"\x00\xff",
    ],
    ids=[
        "superscript",
        "superscript-bytes",
        "5000-digits",
        "19-digits",
        "zero",
        "negative",
        "plus",
        "two",
        "empty",
        "binary",
    ],
)
def test_latest_that_is_not_a_version_number_is_refused(repo: LocalRepo, content: bytes):
    (repo.root / "tiny" / "LATEST").write_bytes(content)
    with pytest.raises(PublishError, match="not a positive version number"):
        repo.read_latest("tiny")


def test_latest_is_read_with_surrounding_whitespace(repo: LocalRepo):
    (repo.root / "tiny" / "LATEST").write_bytes(b" 12\r\n")
    assert repo.read_latest("tiny") == 12


def test_latest_content_is_never_quoted(repo: LocalRepo, tmp_path: Path):
    """A LATEST that is not a version number may be anything: its bytes never reach a message."""
    (repo.root / "tiny" / "LATEST").write_text(SECRET)
    with pytest.raises(PublishError) as caught:
        repo.read_latest("tiny")
    assert SECRET[:8] not in str(caught.value)


def test_latest_symlinked_to_a_secret_is_refused_without_reading_it(repo: LocalRepo, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text(SECRET)
    latest = repo.root / "tiny" / "LATEST"
    latest.unlink()
    latest.symlink_to(token)
    with pytest.raises(PublishError, match="is a symlink") as caught:
        repo.read_latest("tiny")
    assert SECRET[:8] not in str(caught.value)


def test_non_ascii_digit_directories_are_not_versions(repo: LocalRepo):
    (repo.root / "tiny" / "\u00b2").mkdir()
    (repo.root / "tiny" / ("9" * 5000)[:200]).mkdir()
    assert repo.versions("tiny") == [1]


def test_symlinked_version_directory_is_refused_at_fetch(repo: LocalRepo, tmp_path: Path):
    """The copy would follow the link, so verification would never see it: fetch refuses it."""
    os.symlink(repo.root / "tiny" / "1", repo.root / "tiny" / "2")
    with pytest.raises(ArtifactError, match="symlink"):
        repo.fetch_version("tiny", 2, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert repo.fetch_version("tiny", 1, tmp_path / "dest-1") == tmp_path / "dest-1"
