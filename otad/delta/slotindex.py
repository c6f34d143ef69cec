"""The cached index of each install target: the verified zchunk header of the image otad last wrote there.

Files in `state_dir/slotindex/`, named after the target's path: `<key>.zckhdr`, the header bytes,
and `<key>.json`, what they describe (the image's length, the header's sha256) and the `stamp` of
the install record they belong to. A delta install stages the header when it starts and commits
it once the target is recorded installed; an index whose stamp is not the target's record now
(another install since, a failed one) is not used. A stale index only costs bandwidth: every
reused chunk is hashed again when it is read. Which record a stamp names is the caller's.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import time
from dataclasses import dataclass
from typing import Optional, cast

from otad.delta import zck
from otad.durable import atomic_write
from otad.errors import OtadError

DIRECTORY = "slotindex"
MAX_META_BYTES = 4096
READ_BYTES = 256 << 10


@dataclass(frozen=True)
class Cached:
    header: zck.ZckHeader
    image_length: int


def key_for(path: str) -> str:
    """A file name for the target at `path` (its real path, '/' turned into '_')."""
    return os.path.realpath(path).strip("/").replace("/", "_") or "_"


def _paths(state_dir: str, path: str) -> "tuple[str, str, str]":
    base = os.path.join(state_dir, DIRECTORY, key_for(path))
    return base + ".zckhdr", base + ".json", base + ".zckhdr.new"


def stage(state_dir: str, path: str, header: "bytes | mmap.mmap") -> None:
    """Keep `header` for the target at `path` until `commit` (the install is not done yet)."""
    _, _, new = _paths(state_dir, path)
    os.makedirs(os.path.dirname(new), exist_ok=True)
    atomic_write(new, cast(bytes, header))  # a mapping is written as it is, not copied to the heap


def staged(state_dir: str, path: str) -> str:
    """Where `stage` keeps the header for the target at `path`."""
    return _paths(state_dir, path)[2]


def commit(state_dir: str, path: str, stamp: str, image_length: int) -> None:
    """The staged header is now the index of what the target at `path` holds (record `stamp`)."""
    header_path, meta_path, new = _paths(state_dir, path)
    digest = hashlib.sha256()
    buf = bytearray(READ_BYTES)  # one buffer: the staged header of a 1 GiB image is 4.5 MB
    with open(new, "rb") as f, memoryview(buf) as view:
        for n in iter(lambda: f.readinto(buf), 0):
            digest.update(view[:n])
    forget(state_dir, path, keep_staged=True)
    os.replace(new, header_path)
    meta = {"stamp": stamp, "image_length": image_length, "header_sha256": digest.hexdigest(), "written_at": time.time()}
    atomic_write(meta_path, json.dumps(meta).encode("utf-8") + b"\n")


def forget(state_dir: str, path: str, *, keep_staged: bool = False) -> None:
    """Drop the target's index (an install into it starts, or it failed)."""
    header_path, meta_path, new = _paths(state_dir, path)
    for name in (meta_path, header_path) + (() if keep_staged else (new,)):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def load(state_dir: str, path: str, stamp: str, limits: zck.Limits = zck.Limits()) -> Optional[Cached]:
    """The target's index if it belongs to record `stamp` and reads back intact, else None; kept
    for matching only (zck.ChunkIndex.matching_only), its digests read from the file."""
    header_path, meta_path, _ = _paths(state_dir, path)
    try:
        with open(meta_path, "rb") as f:
            meta = json.loads(f.read(MAX_META_BYTES).decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("stamp") != stamp:
            return None
        with open(header_path, "rb") as f:
            if os.fstat(f.fileno()).st_size > limits.max_header_bytes:
                return None
            # Mapped, not read: a freed 1 MB heap block would raise glibc's mmap threshold (see install.delta).
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if hashlib.sha256(data).hexdigest() != meta.get("header_sha256"):
                    return None
                header = zck.parse_header(data, name=header_path, limits=limits, matching=True)
                header = header.on_file(header_path)
    except (OSError, ValueError, OtadError):
        return None  # a cache: unreadable means absent
    length = meta.get("image_length")
    if not isinstance(length, int) or length != header.index.image_length:
        return None
    return Cached(header, length)
