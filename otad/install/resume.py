"""Where an interrupted install can go on: the resume point, as data and as JSON.

A `ResumePoint` is taken inside an image member, between two chunks, when everything read
before it has been decoded, written and synced to the targets: the CPIO member's position
(and crc sum), the saved state of the sha256 over the stored bytes, the bytes written, and
a sample of the last bytes written (read back from the target before resuming, so a slot
changed in between is noticed). The signed head travels with it and is verified again on
resume. Only members the installer can take up again get points: images (raw, ext4) not
encrypted, stored plain or as zstd (at frame ends), in a bundle without scripts.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from otad.errors import StateError
from otad.install.pipeline import ArtifactResult
from otad.statefile import JsonObject

JOURNAL_NAME = "resume.json"  # in state_dir; written by the daemon (hawkbit/journal.py)
MAX_HEAD_BYTES = 256 << 10  # a larger sw-description is not worth carrying in every checkpoint


@dataclass(frozen=True)
class MemberPosition:
    """How far into one CPIO member the reader got (`consumed` data bytes, their crc sum)."""

    name: str
    size: int
    magic: str
    checksum: int
    header_offset: int
    consumed: int
    crc_sum: int


@dataclass(frozen=True)
class ArtifactPosition:
    """How far the member's decoding got: the stored-bytes hash state and the bytes written."""

    stored_hash: bytes
    stored_count: int
    written: int
    sample_sha256: str  # sha256 of the `sample_bytes` written just before `written`
    sample_bytes: int


@dataclass(frozen=True)
class ResumePoint:
    description: bytes
    signature: Optional[bytes]
    offset: int  # bundle bytes consumed
    member: MemberPosition
    artifact: ArtifactPosition
    targets: Tuple[str, ...]  # the member's target paths, which must be the same on resume
    done: Tuple[ArtifactResult, ...]  # members installed completely before this one

    def to_json(self) -> Dict[str, Any]:
        return {
            "description": encode_bytes(self.description),
            "signature": None if self.signature is None else encode_bytes(self.signature),
            "offset": self.offset,
            "member": vars(self.member).copy(),
            "artifact": {**vars(self.artifact), "stored_hash": encode_bytes(self.artifact.stored_hash)},
            "targets": list(self.targets),
            "done": [vars(r).copy() for r in self.done],
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> "ResumePoint":
        """Parse what to_json wrote; a StateError names the field that is wrong."""
        fields = JsonObject(data, where)
        member = JsonObject(fields.get("member", dict), f"{where}: member")
        artifact = JsonObject(fields.get("artifact", dict), f"{where}: artifact")
        signature = fields.get("signature", (str, type(None)))
        done = []
        for i, item in enumerate(fields.get("done", list)):
            result = JsonObject(item, f"{where}: done[{i}]")
            done.append(ArtifactResult(result.get("name", str), result.count("stored_bytes"),
                                       result.count("written_bytes"), result.get("sha256", str)))
        targets = fields.get("targets", list)
        if not all(isinstance(t, str) for t in targets):
            raise StateError("targets: expected a list of paths", where)
        return cls(
            description=decode_bytes(fields.get("description", str), f"{where}: description"),
            signature=None if signature is None else decode_bytes(signature, f"{where}: signature"),
            offset=fields.count("offset"),
            member=MemberPosition(member.get("name", str), member.count("size"), member.get("magic", str),
                                  member.count("checksum"), member.count("header_offset"), member.count("consumed"),
                                  member.count("crc_sum")),
            artifact=ArtifactPosition(decode_bytes(artifact.get("stored_hash", str), f"{where}: artifact.stored_hash"),
                                      artifact.count("stored_count"), artifact.count("written"),
                                      artifact.get("sample_sha256", str), artifact.count("sample_bytes")),
            targets=tuple(targets),
            done=tuple(done),
        )


def discard_journal(state_dir: str) -> None:
    """Forget any saved resume point: an install that starts over makes it stale."""
    try:
        os.unlink(os.path.join(state_dir, JOURNAL_NAME))
    except FileNotFoundError:
        pass


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise StateError(f"not base64: {exc}", where) from exc
