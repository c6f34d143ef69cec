"""One delta image's install: its zchunk header checked, the plan, the assembly into the target.

Owns the steps of a `type = "delta"` entry, in the order that keeps every refusal before the first
write: the header member (at most zck.Limits.max_header_bytes) against the sha256 of the signed
sw-description, parsed strictly and checked usable (uncompressed SHA-256 digests, no dict) and
small enough for the target; where the chunks come from (install/chunks.py: a static URL, a
deployment artifact, or a later member of this bundle); what the running slot holds (otad.delta.source)
and what the target already holds in place (an interrupted install of the same header, the
version before it). Then the assembly (otad.delta.assemble) into the chain handler's sink, with a
resume checkpoint (state_dir/delta.json) every `checkpoint_bytes` and progress in planned bytes;
last the image-sha256 check and the target's new cached index. The bundle's order is the installer's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, List, Optional, Tuple

from otad.delta import slotindex, source, zck
from otad.delta.assemble import (FETCHED, REFETCHED, SOURCE, TARGET, Assembler, ChunkFeed, RangeFeed,
                                 StreamFeed, find_present, source_reader)
from otad.delta.fetch import MAX_RANGES_CAP, FetchPolicy, FetchStats, RangeFetcher
from otad.delta.plan import Plan
from otad.delta.srcindex import NOT_FOUND
from otad.durable import atomic_write
from otad.errors import ImageError, ImageHashMismatch, ImageTooLarge, InstallError, StateError
from otad.install.chunks import RemoteFile
from otad.install.handlers import HANDLERS, HandlerOptions
from otad.install.pipeline import ArtifactResult
from otad.install.plan import InstallRequest, MemberPlan, delta_source
from otad.install.status import INSTALLED, INSTALLING, TargetRecord, TargetStatusStore
from otad.progress import Progress, ProgressListener
from otad.statefile import JsonObject, read_object
from otad.swu.cpio import CpioMember

log = logging.getLogger(__name__)

JOURNAL_NAME = "delta.json"  # in state_dir: how far an interrupted delta install got
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # every zstd chunk starts so: tells old hawkBit's multipart framing apart
PROGRESS_STEP = 1 << 20
READ_BYTES = 1 << 20
URL, ARTIFACT, BUNDLE = "url", "artifact", "bundle"
STREAM_SHARE = 7 / 8  # of a bundle's chunk data to fetch: above it, the rest of the bundle is read instead


@dataclass(frozen=True)
class DeltaReport:
    """What a delta install took from where, and what fetching cost."""

    name: str
    target: str
    image_bytes: int
    chunks: int
    index: str  # how the source was indexed (otad.delta.source)
    layout: str  # url, artifact or bundle
    chunks_by_origin: Tuple[Tuple[str, int], ...]
    bytes_by_origin: Tuple[Tuple[str, int], ...]
    payload_bytes: int  # chunk bytes fetched (compressed)
    body_bytes: int  # bytes read from the server or the bundle for them, framing included
    requests: int
    mode: str  # multipart, single, sequential, or stream (read with the bundle)
    fallbacks: Tuple[str, ...]

    def by_origin(self, origin: str) -> Tuple[int, int]:
        """(chunks, uncompressed bytes) that came from `origin` (target, source, fetched, refetched)."""
        return dict(self.chunks_by_origin).get(origin, 0), dict(self.bytes_by_origin).get(origin, 0)

    @property
    def reused_bytes(self) -> int:
        return self.by_origin(SOURCE)[1] + self.by_origin(TARGET)[1]

    def summary(self) -> str:
        """One line: "reused 82.5 MB, fetched 4.1 MB in 3 requests" and what was unusual."""
        how = (f"in {self.requests} request{'' if self.requests == 1 else 's'}" if self.mode != "stream"
               else "with the bundle")
        line = f"reused {_mb(self.reused_bytes)}, fetched {_mb(self.body_bytes)} {how}"
        chunks, in_place = self.by_origin(TARGET)
        if chunks:
            line += f"; {_mb(in_place)} already in place, not written"
        again = self.by_origin(REFETCHED)[0]
        if again:
            line += f"; {again} chunk{'' if again == 1 else 's'} changed in the source, fetched instead"
        if self.fallbacks:
            by = {"multipart": "fewer ranges a request", "single": "single ranges"}.get(self.mode, "one sequential read")
            line += f"; {self.fallbacks[-1]}: fetched by {by}"
        return line


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


@dataclass(frozen=True)
class _Journal:
    header_sha256: str
    target: str
    next_chunk: int


class DeltaInstall:
    """The install of one delta image, fed by the installer: `begin` with the header member,
    then `run` (with the body member when the chunks are in the bundle: `waits_for`)."""

    def __init__(self, plan: MemberPlan, request: InstallRequest, status: TargetStatusStore,
                 options: HandlerOptions, progress: ProgressListener, version: Optional[str]) -> None:
        delta = plan.delta
        assert delta is not None
        self.image, self.target = delta
        assert self.image.delta is not None
        self.props = self.image.delta
        self.member_plan = plan
        self.request = request
        self.opts = request.delta
        self.status = status
        self.handler_options = options
        self.progress = progress
        self.version = version
        self.name = plan.filename
        self.header: Optional[zck.ZckHeader] = None
        self.remote: Optional[RemoteFile] = None
        self.layout = URL
        self.waits_for: Optional[str] = None  # a member of the bundle holds the chunk data (L3)
        self.report: Optional[DeltaReport] = None
        self.writing = False  # the target has been marked installing: its old content is void
        self.left_stream = False  # the bundle's stream was left for Range requests into its link

    # ---------------------------------------------------------------- before anything is written

    def begin(self, member: CpioMember) -> None:
        """Read and check the header member; find where the chunks come from. Its bytes are kept
        on disk (the target's index once it is written), not in memory."""
        data = _read_member(member, zck.Limits().max_header_bytes)
        header = self._checked(data)
        if not self.request.dry_run and self.opts.state_dir:
            slotindex.stage(self.opts.state_dir, self.target.path, data)
            # From here its digests are read from the staged copy (4 MB for a 1 GiB image in 16 KiB chunks),
            # and the mapping goes before _locate loads an HTTP client.
            header = header.on_file(slotindex.staged(self.opts.state_dir, self.target.path))
            if isinstance(data, mmap.mmap):
                data.close()
        self._found(header)

    def check_header(self, data: "bytes | mmap.mmap") -> None:
        """The header member's bytes: the signed one, usable, small enough for the target."""
        self._found(self._checked(data))

    def _checked(self, data: "bytes | mmap.mmap") -> zck.ZckHeader:
        limits = zck.Limits()
        assert self.image.sha256 is not None  # planning requires it: delta images need a signed bundle
        header = zck.verify_signed(data, self.image.sha256, name=f"image {self.name!r}", limits=limits)
        zck.check_delta_usable(header, f"image {self.name!r}")
        if header.index.image_length > self.target.capacity:
            raise ImageTooLarge(f"the delta image has {header.index.image_length} bytes, more than the "
                                f"{self.target.capacity} of {self.target.description}", self.name)
        return header

    def _found(self, header: zck.ZckHeader) -> None:
        """A checked header: where its chunks come from."""
        self.header = header
        self._locate(header)
        log.info("%s: delta image of %d bytes in %d chunks for %s, chunks from %s", self.name,
                 header.index.image_length, len(header.index), self.target.description,
                 self.remote.url if self.remote else f"bundle member {self.waits_for!r}")

    def _locate(self, header: zck.ZckHeader) -> None:
        props, sources = self.props, self.opts.sources
        if props.url is not None:
            opener = sources.static(props.url)
            if opener is None:
                raise InstallError(f"properties.url {props.url}: no HTTP client here to fetch chunks with", self.name)
            self.remote = RemoteFile(props.url, header.file_length, opener)
            return
        assert props.zckfile is not None
        artifact = sources.artifact(props.zckfile)
        if artifact is None:
            self.layout, self.waits_for = BUNDLE, props.zckfile
            return
        if artifact.size != header.file_length:
            raise ImageError(f"artifact {props.zckfile!r} has {artifact.size} bytes, the zchunk header describes "
                             f"a .zck of {header.file_length}", self.name)
        self.layout, self.remote = ARTIFACT, artifact

    def preview(self, data: bytes) -> str:
        """What installing would reuse and fetch (`otad info`): the same checks and plan, nothing written."""
        self.check_header(data)
        assert self.header is not None
        with open(delta_source(self.image, self.request.device_dir), "rb") as src:
            plan, how = self._plan(self.header, src)
        where = self.remote.url if self.remote else f"bundle member {self.waits_for!r}"
        return f"{plan.summary(plan.requests(self._max_ranges()))} from {where} (source index: {how})"

    # ---------------------------------------------------------------- the install

    def run(self, touched: List[str], body: Optional[CpioMember] = None, stream_only: bool = False) -> ArtifactResult:
        """Plan, assemble and record the image; `touched` gets the target once it is being written.
        `body`: the bundle member holding the chunk data, read from the stream (`stream_only`, or
        when most of it is needed) or fetched by Range from the bundle's link (`left_stream` then)."""
        header = self.header
        assert header is not None and (body is not None) == (self.waits_for is not None)
        with ExitStack() as stack:
            src = stack.enter_context(open(delta_source(self.image, self.request.device_dir), "rb"))
            plan, how = self._plan(header, src)
            feed, fetcher = self._feed(header, plan, body, stack, stream_only)
            self._start_writing(touched)
            assembler = self._assemble(header, plan, feed, src.fileno(), stack)
        self._check_image(header)
        return self._finish(header, plan, how, assembler, fetcher, feed)

    def _plan(self, header: zck.ZckHeader, src: BinaryIO) -> Tuple[Plan, str]:
        path = delta_source(self.image, self.request.device_dir)
        length = source.source_length(src, self.props.source_size, path)
        cached = slotindex.load(self.opts.state_dir, path, _stamp(self.status.get(path))) \
            if self.opts.state_dir else None
        found = source.find(header.index, src, length, cached.header.index if cached else None,
                            source.IndexPolicy(self.opts.libzck, self.opts.python_index), name=path,
                            on_progress=self._busy)
        cached = None  # the source's index is not needed past matching: its memory goes before the next
        present = self._present(header, found.match.offsets)
        plan = Plan(header.index, found.match, bytes(present))
        log.info("%s: source %s (%d bytes, %s): %s; %d chunks already in %s", self.name, path, length, found.how,
                 plan.summary(plan.requests(self._max_ranges())), sum(present), self.target.description)
        return plan, found.how

    def _present(self, header: zck.ZckHeader, offsets: "Iterable[int]") -> bytearray:
        """Chunks the target holds in place: those an interrupted install of this header wrote
        (the journal), every chunk that would be fetched, and those the target's own cached
        index puts at the same offset."""
        index = header.index
        candidates = bytearray(len(index))  # 1: look in the target (a byte a chunk, not a set of ints)
        for i, o in enumerate(offsets):
            if o == NOT_FOUND:
                candidates[i] = 1
        journal = self._journal()
        if journal is not None:
            written = min(journal.next_chunk, len(index))
            candidates[:written] = b"\x01" * written
            log.info("%s: an interrupted install of this image wrote %d chunks: checking them in %s", self.name,
                     journal.next_chunk, self.target.description)
        for i in self._same_offset(index):
            candidates[i] = 1
        fd = os.open(self.target.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            base = self.target.offset
            wanted = (i for i, c in enumerate(candidates) if c)
            return find_present(index, wanted, lambda n, at: os.pread(fd, n, base + at),
                                on_bytes=lambda _n: self._busy(0))
        finally:
            os.close(fd)

    def _same_offset(self, index: zck.ChunkIndex) -> Iterator[int]:
        """Chunks the target's cached index (the image written there before) has at the same offset."""
        if not self.opts.state_dir:
            return
        old = slotindex.load(self.opts.state_dir, self.target.path, _stamp(self.status.get(self.target.path)))
        if old is None:
            return
        theirs, j = old.header.index, 0
        for i in range(len(index)):
            while j < len(theirs) and theirs.offsets[j] < index.offsets[i]:
                j += 1
            if j < len(theirs) and theirs.offsets[j] == index.offsets[i] and theirs.lengths[j] == index.lengths[i] \
                    and theirs.digest_uncompressed(j) == index.digest_uncompressed(i):
                yield i

    def _feed(self, header: zck.ZckHeader, plan: Plan, body: Optional[CpioMember], stack: ExitStack,
              stream_only: bool) -> Tuple[ChunkFeed, Optional[RangeFetcher]]:
        remote, shift = self.remote, 0
        if body is not None:
            base = self._body_base(header, body)
            bundle = None if stream_only else self.opts.sources.bundle()
            # Fetching most of the body anyway: read it on from the stream rather than open ranges.
            if bundle is None or plan.fetch_bytes >= STREAM_SHARE * (body.size - (header.length - base)):
                return StreamFeed(body.read, header.index, base, f"bundle member {body.name!r}"), None
            self.opts.sources.leave_stream()
            self.left_stream = True
            remote, shift = bundle, body.data_offset - base
        assert remote is not None
        fetcher = RangeFetcher(remote.opener, remote.url, remote.size, etag=remote.etag,
                               policy=FetchPolicy(max_ranges=self._max_ranges(), min_interval_s=self.opts.min_interval_s,
                                                  resume=self.opts.retry),
                               data_prefix=ZSTD_MAGIC if header.comp_type == zck.COMP_ZSTD else b"")
        feed = RangeFeed(fetcher, header.index, plan.requests(self._max_ranges()), shift)
        stack.callback(feed.close)
        return feed, fetcher

    def _body_base(self, header: zck.ZckHeader, body: CpioMember) -> int:
        """Where in the .zck the member starts: after the header (the body alone) or at 0 (the whole file)."""
        if body.size == header.index.data_length:
            return header.length
        if body.size == header.file_length:
            return 0
        raise ImageError(f"bundle member {body.name!r} has {body.size} bytes; the zchunk header describes a body "
                         f"of {header.index.data_length} (or a .zck of {header.file_length})", self.name)

    def _max_ranges(self) -> int:
        return max(1, min(self.props.max_ranges or self.opts.max_ranges, MAX_RANGES_CAP))

    def _start_writing(self, touched: List[str]) -> None:
        """From here the target's old content is void: the record says installing, its index is gone."""
        if self.request.dry_run:
            return
        touched.append(self.target.path)
        self.writing = True
        self.status.mark(self.target.path, INSTALLING, version=self.version)
        if self.opts.state_dir:
            slotindex.forget(self.opts.state_dir, self.target.path, keep_staged=True)

    def _assemble(self, header: zck.ZckHeader, plan: Plan, feed: ChunkFeed, src_fd: int,
                  stack: ExitStack) -> Assembler:
        handler = HANDLERS[self.props.chain](self.request.device_dir, self.handler_options)
        sink = stack.enter_context(handler.open(self.target, dry_run=self.request.dry_run))
        assembler = Assembler(header, plan, source_reader(src_fd), feed, name=self.name)
        total = plan.reused_bytes + plan.present_bytes + plan.fetch_bytes
        done = shown = since = 0
        for placed in assembler:
            if placed.data is None:
                sink.skip(placed.length)  # type: ignore[attr-defined]  # raw sinks can
            else:
                sink.write(placed.data)
            step = header.index.comp_lengths[placed.number] if placed.origin in (FETCHED, REFETCHED) \
                else placed.length
            done, since = done + step, since + placed.length
            if since >= self.opts.checkpoint_bytes:
                self._checkpoint(sink, header, placed.number + 1)
                since = 0
            if done - shown >= PROGRESS_STEP or placed.number == len(header.index) - 1:
                shown = done
                self.progress(Progress("delta", self.name, min(done, total), total))
        return assembler

    def _checkpoint(self, sink: object, header: zck.ZckHeader, next_chunk: int) -> None:
        if self.request.dry_run or not self.opts.state_dir:
            return
        sink.sync()  # type: ignore[attr-defined]  # what the journal says is written must be on disk
        body = {"header_sha256": header.sha256, "target": self.target.path, "next_chunk": next_chunk}
        atomic_write(self._journal_path(), json.dumps(body).encode("utf-8") + b"\n")

    def _check_image(self, header: zck.ZckHeader) -> None:
        """The otad-only `image-sha256`: the whole image read back from the target."""
        expected = self.props.image_sha256
        if expected is None or self.request.dry_run:
            return
        digest = hashlib.sha256()
        buf = bytearray(READ_BYTES)  # one buffer for the whole read-back: no 1 MiB object a read
        view = memoryview(buf)
        fd = os.open(self.target.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            at, end = self.target.offset, self.target.offset + header.index.image_length
            while at < end:
                n = os.preadv(fd, [view[:min(READ_BYTES, end - at)]], at)
                if not n:
                    break
                digest.update(view[:n])
                at += n
        finally:
            os.close(fd)
            view.release()
        if digest.hexdigest() != expected:
            raise ImageHashMismatch(f"properties.image-sha256: the assembled image hashes to {digest.hexdigest()}, "
                                    f"sw-description says {expected}", self.name)

    def _finish(self, header: zck.ZckHeader, plan: Plan, how: str, assembler: Assembler,
                fetcher: Optional[RangeFetcher], feed: ChunkFeed) -> ArtifactResult:
        if not self.request.dry_run:
            self.status.mark(self.target.path, INSTALLED, version=self.version, sha256=header.sha256)
            if self.opts.state_dir:
                slotindex.commit(self.opts.state_dir, self.target.path, _stamp(self.status.get(self.target.path)),
                                 header.index.image_length)
                self._clear_journal()
        stats = assembler.stats
        fetched: FetchStats = fetcher.stats if fetcher is not None else FetchStats(
            body_bytes=feed.bytes_read if isinstance(feed, StreamFeed) else 0, mode="stream")
        payload = sum(header.index.comp_lengths[i] for i in range(len(header.index))
                      if not plan.in_target(i) and plan.match.offsets[i] == NOT_FOUND) \
            if fetcher is None else fetched.payload_bytes
        self.report = DeltaReport(self.name, self.target.description, header.index.image_length, len(header.index),
                                  how, self.layout, tuple(stats.chunks.items()), tuple(stats.bytes.items()), payload,
                                  fetched.body_bytes, fetched.requests, fetched.mode, fetched.fallbacks)
        log.info("%s: %s", self.name, self.report.summary())
        return ArtifactResult(self.name, header.length, header.index.image_length, header.sha256)

    # ---------------------------------------------------------------- the journal, progress

    def _journal_path(self) -> str:
        assert self.opts.state_dir is not None
        return os.path.join(self.opts.state_dir, JOURNAL_NAME)

    def _journal(self) -> Optional[_Journal]:
        """The checkpoint of an interrupted install of this header into this target, if any."""
        if not self.opts.state_dir or self.header is None:
            return None
        try:
            body = read_object(self._journal_path(), limit=4096)
            if body is None:
                return None
            data = JsonObject(body, self._journal_path())
            journal = _Journal(data.get("header_sha256", str), data.get("target", str), data.count("next_chunk"))
        except StateError:
            return None  # a journal that cannot be read only costs the chunks fetched again
        if (journal.header_sha256, journal.target) != (self.header.sha256, self.target.path):
            return None
        return journal

    def _clear_journal(self) -> None:
        try:
            os.unlink(self._journal_path())
        except FileNotFoundError:
            pass

    def _busy(self, _done: int) -> None:
        beat = self.handler_options.heartbeat
        if beat is not None:
            beat()


def _read_member(member: CpioMember, limit: int) -> "mmap.mmap | bytes":
    """A member's bytes (at most `limit`) in an anonymous mapping, not the heap: the header of a
    1 GiB image in 16 KiB chunks is 4.5 MB, and a freed heap block that big raises glibc's mmap
    threshold, after which the 1 MiB read blocks of the install stay in the heap and its RSS grows."""
    if member.remaining == 0 or member.remaining > limit:
        return member.read_all(limit)  # an empty member, or one refused there in its words
    buf = mmap.mmap(-1, member.remaining)
    for piece in member.chunks(READ_BYTES):
        buf.write(piece)
    return buf


def _stamp(record: Optional[TargetRecord]) -> str:
    """Which install record a cached index belongs to: only an `installed` one counts."""
    if record is None or record.state != INSTALLED:
        return "none"
    return f"{record.sha256}@{record.updated_at!r}"

