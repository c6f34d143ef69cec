"""The download journal: saved and loaded intact; anything unusable is removed, never fatal."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from otad.hashstate import ResumableHash, available
from otad.hawkbit.ddi import Artifact
from otad.hawkbit.journal import DownloadCheckpoint, DownloadJournal
from otad.install.pipeline import ArtifactResult
from otad.install.resume import ArtifactPosition, MemberPosition, ResumePoint

pytestmark = pytest.mark.skipif(not available(), reason="libcrypto cannot be loaded")

ART = Artifact("update.swu", 10_000, None, "ab" * 20, None, "http://server/a")


def checkpoint(offset: int = 4096, hash_name: str = "sha1") -> DownloadCheckpoint:
    h = ResumableHash(hash_name)
    h.update(b"x" * offset)
    point = ResumePoint(b"software = {};", b"\x30\x80sig", offset,
                        MemberPosition("rootfs.img", 9000, "070701", 0, 512, offset - 1024, 0),
                        ArtifactPosition(ResumableHash("sha256").state(), offset - 1024, offset - 1024, "00" * 32, 100),
                        ("/dev/mmcblk0p3",), (ArtifactResult("boot.bin", 10, 10, "11" * 32),))
    return DownloadCheckpoint("7", "update.swu", 10_000, None, '"etag"', hash_name, h.state(), point)


def test_a_checkpoint_comes_back_as_saved_and_goes_on_hashing(tmp_path: Path) -> None:
    journal = DownloadJournal(str(tmp_path))
    saved = checkpoint()
    journal.save(saved)
    assert oct((tmp_path / "resume.json").stat().st_mode & 0o777) == "0o600"
    loaded = journal.load()
    assert loaded == saved and loaded.matches("7", ART)
    prefix = loaded.prefix_hash()
    assert prefix is not None and prefix.count == 4096
    journal.clear()
    assert journal.load() is None and not (tmp_path / "resume.json").exists()


@pytest.mark.parametrize("why,change", [
    ("another action", lambda c: replace(c, action_id="8")),
    ("another size", lambda c: replace(c, size=9999)),
    ("offset at the end", lambda c: replace(c, point=replace(c.point, offset=10_000))),
    ("hash the server no longer announces", lambda c: replace(c, hash_name="sha256",
                                                              hash_state=ResumableHash("sha256").state())),
])
def test_a_checkpoint_for_something_else_does_not_match(why: str, change) -> None:
    assert not change(checkpoint()).matches("7", ART), why


@pytest.mark.parametrize("content", [
    b"", b"{", b"\xff\xfe", b"[]", b'{"action_id": 7}',
    json.dumps({"action_id": "7"}).encode(),
])
def test_an_unreadable_journal_is_set_aside_and_the_download_starts_over(tmp_path: Path, content: bytes,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "resume.json").write_bytes(content)
    assert DownloadJournal(str(tmp_path)).load() is None
    assert not (tmp_path / "resume.json").exists()
    assert (tmp_path / "resume.json.corrupt").read_bytes() == content
    assert "resume.json unreadable, moved to" in caplog.text


def test_otad_status_only_looks_at_an_unreadable_journal(tmp_path: Path) -> None:
    (tmp_path / "resume.json").write_bytes(b"[" * 5000)
    assert DownloadJournal(str(tmp_path)).load(remove_unusable=False) is None
    assert (tmp_path / "resume.json").read_bytes() == b"[" * 5000


def test_a_hash_state_of_the_wrong_size_is_unusable(tmp_path: Path) -> None:
    journal = DownloadJournal(str(tmp_path))
    journal.save(replace(checkpoint(), hash_state=os.urandom(20)))
    assert journal.load() is None and not (tmp_path / "resume.json").exists()
    assert (tmp_path / "resume.json.corrupt").exists()
