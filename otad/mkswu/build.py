"""The build: template → staged artifacts → edited, signed sw-description → the .swu file.

Plans one member per artifact (named as swugenerator names them), stores each once, edits
and signs the template, and writes the CPIO archive (crc or newc) through a temporary file, so
the output appears only once it is complete; a member that changed meanwhile is refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from otad.errors import ConfigError, OtadError
from otad.mkswu import delta
from otad.mkswu.inputs import find_artifact, open_source
from otad.mkswu.signing import Signer
from otad.mkswu.staging import ZSTD_FRAME_MIB, Job, StoredArtifact, staging_dir, store
from otad.mkswu.template import DESCRIPTION, SIG_NAME, Entry, edit_template, entry_updates, find_entries, read_template

if TYPE_CHECKING:
    from otad.swu.cpio import CpioWriter

FORMATS = ("crc", "newc")
_MAX_NAME = 254  # SWUpdate refuses c_namesize >= 256, and the NUL counts


@dataclass(frozen=True)
class BuildOptions:
    template: str
    output: str
    artifact_dirs: Tuple[str, ...] = (".",)
    signer: Optional[Signer] = None
    aes_key: Optional[bytes] = field(default=None, repr=False)
    fmt: str = "crc"  # or "newc"
    compress: bool = True
    variables: Mapping[str, str] = field(default_factory=dict)
    zstd_frame_mib: int = ZSTD_FRAME_MIB  # 0: one frame per artifact
    delta: delta.DeltaOptions = delta.DeltaOptions()  # how `type = "delta"` entries are built


@dataclass(frozen=True)
class BuildResult:
    output: str
    size: int
    sw_description: bytes
    signature: Optional[bytes]
    signed_by: Optional[str]
    artifacts: Tuple[StoredArtifact, ...]  # the members after sw-description (and .sig), in order
    zck_files: Tuple[str, ...] = ()  # .zck files written beside the bundle, to upload with it


def build(options: BuildOptions) -> BuildResult:
    """Build the bundle; the output file appears only once it is complete."""
    template = read_template(options.template, options.variables, options.artifact_dirs)
    entries = find_entries(template)
    jobs = _plan(entries, options)
    output = os.path.abspath(options.output)
    deltas = delta.plan(template, entries, options.delta, [j.member for j in jobs] + [DESCRIPTION, SIG_NAME], output)
    with staging_dir(output) as staging:
        stored: Dict[str, StoredArtifact] = {}
        zcks: Dict[str, delta.ZckImage] = {}
        for job in jobs:
            if job.member in stored:
                continue
            d = deltas.first(job.member) if job.delta else None
            if d is not None:
                zcks[job.member] = delta.write(job.source, d, staging, options.delta.profile)
                stored[job.member] = zcks[job.member].header
            else:
                stored[job.member] = store(job, options.aes_key, staging, options.zstd_frame_mib << 20)
        updates = [entry_updates(e, stored[j.member]) for e, j in zip(entries, jobs)]
        for d in deltas.entries:
            i = next(i for i, e in enumerate(entries) if e is d.entry)
            updates[i] += delta.entry_updates(d, zcks[d.entry.filename])
        text = edit_template(template, entries, updates, delta.full_modes(deltas, zcks))
        content = text.encode("utf-8")
        signature = options.signer.sign(content) if options.signer else None
        artifacts = list(stored.values()) + delta.members(deltas, zcks)
        size = _write_bundle(output, options.fmt, content, signature, artifacts)
        published = delta.publish(deltas, zcks, output)
    return BuildResult(output, size, content, signature, options.signer.describe() if options.signer else None,
                       tuple(artifacts), tuple(published))


def _plan(entries: Sequence[Entry], options: "BuildOptions") -> List[Job]:
    """The job for each entry; entries that need the same member share one job."""
    jobs: Dict[str, Job] = {}
    planned = []
    for entry in entries:
        encrypted = entry.encrypted and not entry.delta  # a delta entry's header: otad.mkswu.delta refuses both
        if encrypted and options.aes_key is None:
            raise entry.fail("encrypted = true, but no AES key was given (-K FILE)")
        compression = entry.compression if options.compress and not entry.delta else None
        # swugenerator's names: x → x.zlib / x.zstd when it compresses, then + .enc when it encrypts.
        member = entry.filename + (f".{compression}" if compression else "") + (".enc" if encrypted else "")
        if len(member.encode("utf-8")) > _MAX_NAME:
            raise entry.fail(f"member name {member!r} is longer than {_MAX_NAME} bytes")
        job = Job(member, find_artifact(entry.filename, options.artifact_dirs, entry.where), compression,
                  encrypted, entry.delta)
        known = jobs.setdefault(member, job)
        if known != job:
            raise entry.fail(f"member {member!r} would be both {known.source} ({known.how()}) and "
                             f"{job.source} ({job.how()})")
        planned.append(known)
    return planned


def _write_bundle(output: str, fmt: str, content: bytes, signature: Optional[bytes],
                  stored: Sequence[StoredArtifact]) -> int:
    from otad.durable import replacing
    from otad.swu.cpio import CRC, NEWC, CpioWriter

    try:
        with replacing(output, 0o644) as f:
            with CpioWriter(f, {"crc": CRC, "newc": NEWC}[fmt]) as cpio:
                cpio.add(DESCRIPTION, content)
                if signature is not None:
                    cpio.add(SIG_NAME, signature)
                for artifact in stored:
                    _add_member(cpio, artifact)
            return cpio.bytes_written
    except OSError as exc:
        raise OtadError(f"cannot write: {exc.strerror}", output) from exc


class _HashingReader:
    def __init__(self, src: IO[bytes], path: str) -> None:
        self.src, self.path, self.sha256 = src, path, hashlib.sha256()

    def read(self, n: int) -> bytes:
        try:
            data = self.src.read(n)
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", self.path) from exc
        self.sha256.update(data)
        return data


def _add_member(cpio: CpioWriter, artifact: StoredArtifact) -> None:
    """Copy a member, checking that it still is what sw-description says."""
    with open_source(artifact.path) as src:
        src.seek(artifact.offset)
        reader = _HashingReader(src, artifact.path)
        try:
            cpio.add_stream(artifact.member, artifact.size, reader, checksum=artifact.checksum)
        except ValueError as exc:
            raise OtadError(f"changed while the bundle was built: {exc}", artifact.path) from exc
    if reader.sha256.hexdigest() != artifact.sha256:
        raise OtadError("changed while the bundle was built: its sha256 is not the one in sw-description",
                        artifact.path)
