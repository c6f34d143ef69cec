"""Every JSON store under one corruption policy (otad.statefile): bad content raises StateCorrupt
or is dropped as the store's kind says, never a ValueError, KeyError, TypeError or
RecursionError; records stay as they are, caches are set aside by their owner, views are only
shown."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from otad.errors import StateCorrupt, StateError
from otad.hawkbit.actions import ActionLog
from otad.hawkbit.journal import DownloadJournal
from otad.hawkbit.outbox import Outbox
from otad.hawkbit.publish import read_status
from otad.install.status import TargetState, TargetStatusStore
from otad.lock import WriterLock
from otad.state import StateStore
from otad.statefile import read_object

# Bad content of any store: what the reader refuses, and what each parser refuses.
BAD: List[bytes] = [
    b"", b"{", b"\xff\xfe{}", b"[]", b'"text"', b"null", b"[" * 200000, b'{"a": NaN}',
    json.dumps({"a": {"b": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}}).encode(),
    b'{"format": 1, "phase": {"x": 1}}', b'{"ended": [1], "waiting": {"action_id": 1}}',
    b'{"/dev/sda": {"target": "/dev/sda", "state": 7}}', b'{"/dev/sda": []}',
    b'{"format": 1, "next_seq": 2, "entries": [{"seq": "1"}]}', b'{"action_id": {}}',
    b'{"format": 1, "pid": true, "phase": "idle"}',
]

# record stores: name → load it (raises for unreadable content)
RECORDS: Dict[str, Callable[[str], object]] = {
    "state.json": lambda d: StateStore(d).load(),
    "outbox.json": lambda d: Outbox(os.path.join(d, "outbox.json")),
    "actions.json": lambda d: ActionLog.load(os.path.join(d, "actions.json")),
}


@pytest.mark.parametrize("name", sorted(RECORDS))
@pytest.mark.parametrize("content", BAD)
def test_a_record_raises_state_corrupt_and_stays_as_it_is(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(StateCorrupt, match="the file is kept as it is: `otad state reset` sets it aside") as info:
        RECORDS[name](str(tmp_path))
    assert str(info.value.where).startswith(str(path))
    assert path.read_bytes() == content


def test_a_record_that_cannot_be_opened_is_a_state_error_not_corrupt(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    with pytest.raises(StateError, match="cannot read") as info:
        StateStore(str(tmp_path)).load()
    assert not isinstance(info.value, StateCorrupt)


@pytest.mark.parametrize("content", BAD)
def test_the_install_records_are_a_cache_set_aside_by_their_owner(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "targets.json"
    path.write_bytes(content)
    assert TargetStatusStore(str(path), owner=False).all() == {}
    assert path.read_bytes() == content  # otad status only looks
    assert TargetStatusStore(str(path)).all() == {}
    assert not path.exists() and (tmp_path / "targets.json.corrupt").read_bytes() == content


@pytest.mark.parametrize("content", BAD)
def test_the_download_journal_is_a_cache_set_aside_by_its_owner(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "resume.json"
    path.write_bytes(content)
    assert DownloadJournal(str(tmp_path)).load(remove_unusable=False) is None
    assert path.read_bytes() == content
    assert DownloadJournal(str(tmp_path)).load() is None
    assert (tmp_path / "resume.json.corrupt").read_bytes() == content


@pytest.mark.parametrize("content", BAD)
def test_the_views_are_only_shown(tmp_path: Path, content: bytes) -> None:
    status, record = tmp_path / "daemon.json", tmp_path / "writer.json"
    status.write_bytes(content)
    record.write_bytes(content)
    with pytest.raises(StateCorrupt):
        read_status(str(status))
    assert WriterLock(str(tmp_path)).read_record() is None
    assert status.read_bytes() == content and record.read_bytes() == content


def test_old_files_of_every_store_still_load(tmp_path: Path) -> None:
    """What the previous otad wrote: the JSON forms did not change."""
    (tmp_path / "targets.json").write_text(json.dumps({"/dev/mmcblk0p3": {
        "target": "/dev/mmcblk0p3", "state": "installed", "version": "2.0", "sha256": "ab" * 32, "reason": None,
        "updated_at": 1700000000.5}}))
    (tmp_path / "actions.json").write_text(json.dumps({"ended": {"12": "success"}, "waiting": {
        "action_id": "13", "version": "3.0", "target_slot": "b"}}))  # before bootenv was kept
    records = TargetStatusStore(str(tmp_path / "targets.json")).all()
    assert records["/dev/mmcblk0p3"].state is TargetState.INSTALLED
    log = ActionLog.load(str(tmp_path / "actions.json"))
    assert log.ended == {"12": "success"} and log.waiting is not None and log.waiting.bootenv == {}


def test_a_file_over_its_cap_is_corrupt_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"{}" + b" " * 100)
    with pytest.raises(StateCorrupt, match="expected a JSON object of at most 100 bytes"):
        read_object(str(path), limit=100)
    assert read_object(str(tmp_path / "none.json"), limit=100) is None


def test_target_states_are_written_as_the_same_words(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    store = TargetStatusStore(str(path))
    for target, state in zip("abcd", TargetState):
        store.mark(f"/dev/{target}", state, version="1")
    words = {key: record["state"] for key, record in json.loads(path.read_text()).items()}
    assert words == {"/dev/a": "installing", "/dev/b": "installed", "/dev/c": "failed", "/dev/d": "interrupted"}
    assert TargetStatusStore(str(path)).get("/dev/d").state is TargetState.INTERRUPTED  # type: ignore[union-attr]
