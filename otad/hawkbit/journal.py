"""The download journal: where an interrupted deployment download goes on after a restart.

One file, `state_dir/resume.json`, replaced atomically at each resume point the installer
hands out: which action and artifact, the server's ETag, the state of the server's hash over
the bytes so far, and the install's ResumePoint. It is a cache (otad.statefile): an unreadable
journal is logged and set aside, a foreign one removed, and the download starts from the first
byte; nothing else is lost.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from otad.durable import atomic_write
from otad.errors import HashStateError, StateError
from otad.hashstate import ResumableHash
from otad.hawkbit.ddi import Artifact
from otad.install.resume import JOURNAL_NAME, ResumePoint, decode_bytes, discard_journal, encode_bytes
from otad.statefile import JsonObject, read_cache

log = logging.getLogger(__name__)

_MAX_BYTES = 4 << 20  # the signed sw-description (at most 256 KiB) in base64, and the positions

@dataclass(frozen=True)
class DownloadCheckpoint:
    action_id: str
    filename: str
    size: int
    sha256: Optional[str]  # the server's, to recognise the same artifact
    etag: Optional[str]
    hash_name: Optional[str]  # the server's hash over bytes [0, point.offset), if one is announced
    hash_state: Optional[bytes]
    point: ResumePoint

    def matches(self, action_id: str, artifact: Artifact) -> bool:
        """Whether this checkpoint is for this action's artifact, as the server describes it now."""
        announced = artifact.strongest_hash()
        return ((self.action_id, self.filename, self.size, self.sha256) == (
            action_id, artifact.filename, artifact.size, artifact.sha256)
            and 0 < self.point.offset < artifact.size
            and self.hash_name == (announced[0] if announced else None))

    def prefix_hash(self) -> Optional[ResumableHash]:
        if self.hash_name is None or self.hash_state is None:
            return None
        return ResumableHash(self.hash_name, self.hash_state, self.point.offset)


class DownloadJournal:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, JOURNAL_NAME)

    def load(self, *, remove_unusable: bool = True) -> Optional[DownloadCheckpoint]:
        """The saved checkpoint, or None (none saved, or unreadable: a cache, so the download
        starts from byte 0; the daemon sets the file aside, `otad status`, with
        `remove_unusable=False`, only looks)."""
        return read_cache(self.path, self._parse, limit=_MAX_BYTES, owner=remove_unusable)

    def _parse(self, body: Dict[str, Any]) -> DownloadCheckpoint:
        checkpoint = _parse(body, self.path)
        try:
            checkpoint.prefix_hash()  # a state this libcrypto cannot take is as bad as a broken file
        except HashStateError as exc:
            raise StateError(f"hash_state: {exc.what}", self.path) from None
        return checkpoint

    def save(self, checkpoint: DownloadCheckpoint) -> None:
        data = {"action_id": checkpoint.action_id, "filename": checkpoint.filename, "size": checkpoint.size,
                "sha256": checkpoint.sha256, "etag": checkpoint.etag, "hash_name": checkpoint.hash_name,
                "hash_state": None if checkpoint.hash_state is None else encode_bytes(checkpoint.hash_state),
                "point": checkpoint.point.to_json()}
        atomic_write(self.path, json.dumps(data, sort_keys=True).encode(), mode=0o600)

    def clear(self) -> None:
        discard_journal(self.state_dir)


def _parse(data: Dict[str, Any], where: str) -> DownloadCheckpoint:
    fields = JsonObject(data, where)
    optional = (str, type(None))
    state = fields.get("hash_state", optional)
    return DownloadCheckpoint(
        action_id=fields.get("action_id", str), filename=fields.get("filename", str), size=fields.count("size"),
        sha256=fields.get("sha256", optional), etag=fields.get("etag", optional),
        hash_name=fields.get("hash_name", optional),
        hash_state=None if state is None else decode_bytes(state, f"{where}: hash_state"),
        point=ResumePoint.from_json(fields.get("point", dict), f"{where}: point"))
