"""Install one bundle: check everything that can be checked, then stream the images.

The order is SWUpdate's: signature → selection → hardware → every entry planned (handler,
hash, target size) before the first byte is written → artifacts streamed in archive order →
every selected artifact seen → targets synced. The boot environment is not touched here:
the bootenv pairs travel in the result and the caller applies them last, in one write.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

from otad import crashpoint, hashstate
from otad.errors import (BundleFormatError, CompatibilityError, ImageError, InstallError, ManifestError, OtadError,
                         ResumeError)
from otad.hashstate import ResumableHash
from otad.install.handlers import FILE_HANDLERS, HANDLERS, HandlerOptions
from otad.install.handlers.ext4 import property_flag
from otad.install.handlers.files import FileTarget
from otad.install.handlers.raw import RawTarget, read_back
from otad.install.pipeline import (DEFAULT_CHUNK, ArtifactResult, Checkpoints, Decoding, Reader, Sink, StreamPosition,
                                   resumable, stream_artifact)
from otad.install.resume import MAX_HEAD_BYTES, ArtifactPosition, MemberPosition, ResumePoint
from otad.install.status import FAILED, INSTALLED, INSTALLING, TargetStatusStore
from otad.install.versionpolicy import VersionPolicy
from otad.install.versionpolicy import apply as apply_version_policy
from otad.progress import Progress, ProgressListener, ignore
from otad.swu.bundle import SW_DESCRIPTION, Bundle, BundleHead
from otad.swu.cpio import CpioHeader, CpioMember
from otad.swu.crypto import AesKey
from otad.install.scripts import POSTINST, PREINST, ScriptRunner, script_phases
from otad.swu.manifest import BootenvVar, Entry, File, HardwareRevision, Image, Manifest, Script

if TYPE_CHECKING:  # cryptography loads on first use: the idle daemon stays small
    from otad.swu.signature import SignerInfo, Verifier

log = logging.getLogger(__name__)

SAMPLE_BYTES = 64 << 10  # read back from each target before resuming
SelectFn = Callable[[Optional[str], Optional[Tuple[str, str]]], Manifest]
OnBytes = Callable[[int], None]


@dataclass(frozen=True)
class InstallRequest:
    """What the caller wants: which section, for which hardware, how strictly."""

    verifier: Optional[Verifier]  # None: unsigned bundles allowed (an explicit insecure choice)
    hardware: Optional[HardwareRevision] = None
    selection: Optional[Tuple[str, str]] = None
    check_hardware: bool = True
    dry_run: bool = False
    device_dir: str = "/dev"
    chunk_bytes: int = DEFAULT_CHUNK
    zstd_max_window: int = 1 << 27
    protected_paths: Tuple[str, ...] = ()  # never written: the running slot, the boot env
    aes_key: Optional[AesKey] = None  # decrypts `encrypted` entries (install.aes_key_file, -K)
    version_policy: VersionPolicy = VersionPolicy()  # -N, --max-version, -R, sw-versions
    # files and scripts:
    work_dir: Optional[str] = None  # private temp files on disk (state_dir/tmp); None: none allowed
    ext4_resize: bool = False  # grow `ext4` images to their partition unless properties.resize says no
    files_via: str = "auto"  # files on a device: "mount", "debugfs" or "auto" (mount when root)
    script_timeout_s: float = 300.0
    mountinfo: str = "/proc/self/mountinfo"


@dataclass(frozen=True)
class InstallResult:
    manifest: Manifest
    signer: Optional[SignerInfo]
    images: Tuple[ArtifactResult, ...]
    targets: Tuple[str, ...]  # every path written
    bootenv: Tuple[BootenvVar, ...]
    dry_run: bool
    seconds: float


@dataclass
class _Plan:
    """The entries fed by one artifact (one CPIO member may feed several targets)."""

    filename: str
    sha256: Optional[str]
    decoding: Decoding
    expected_size: Optional[int]
    targets: List[Tuple[Image, RawTarget]] = field(default_factory=list)
    result: Optional[ArtifactResult] = None
    files: List[Tuple[File, FileTarget]] = field(default_factory=list)
    scripts: List[Script] = field(default_factory=list)  # spooled once, run per entry

    def paths(self) -> List[str]:
        return [t.path for _, t in self.targets] + [t.path for _, t in self.files]

    def descriptions(self) -> List[str]:
        return [t.description for _, t in self.targets] + [t.description for _, t in self.files]

    def written_paths(self) -> List[str]:
        """The install records this member changes: its image targets and files' devices."""
        return [t.path for _, t in self.targets] + [t.path for _, t in self.files if t.device is not None]


@dataclass(frozen=True)
class Resuming:
    """Resume points of an install: `point` to go on from (None: from the start), `save` to
    call with each new point, about every `every_bytes` written."""

    point: Optional[ResumePoint] = None
    save: Optional[Callable[[ResumePoint], None]] = None
    every_bytes: int = 16 << 20


def install_bundle(source: Reader, request: InstallRequest, *, name: str = "bundle",
                   total_bytes: Optional[int] = None, progress: ProgressListener = ignore,
                   status: Optional[TargetStatusStore] = None, resuming: Resuming = Resuming()) -> InstallResult:
    """Install the bundle read from `source`. Raises an OtadError naming the bundle and image.

    With `resuming.point`, `source` continues the bundle at the point's offset: the head saved
    in the point is verified again, the earlier members count as installed and the member
    the point lies in goes on where it stopped (ResumeError when its targets changed).
    """
    started = time.monotonic()
    status = status if status is not None else TargetStatusStore(None)
    try:
        bundle = _open_bundle(source, name, resuming.point)
        progress(Progress("verify", SW_DESCRIPTION, 0, total_bytes))
        verified = bundle.open_description(request.verifier)
        manifest = select_manifest(verified.description.select, request)
        plans = plan_entries(manifest, request)
        if resuming.point is not None:
            _take_up(plans, manifest, resuming.point)
        crashpoint.reached("install.planned")  # nothing written yet

        def heartbeat() -> None:  # a script or tool runs and no bytes move: keep the watchdog fed
            progress(Progress("busy", None, bundle.bytes_read, total_bytes))

        with ScriptRunner(request.work_dir, timeout_s=request.script_timeout_s, heartbeat=heartbeat,
                          dry_run=request.dry_run) as scripts:
            run = _Run(bundle, plans, manifest, request, status, scripts, handler_options(request, heartbeat),
                       resuming, BundleHead(verified.raw, verified.signature))
            results = run.stream(progress, total_bytes)
    except OtadError as exc:
        if exc.where is None or not exc.where.startswith(name):
            exc.within(name)
        raise
    progress(Progress("done", None, bundle.bytes_read, total_bytes))
    targets = tuple(path for plan in plans.values() for path in plan.paths())
    crashpoint.reached("install.done")
    return InstallResult(manifest, verified.signer, results, targets, manifest.bootenv, request.dry_run,
                         time.monotonic() - started)


def _open_bundle(source: Reader, name: str, point: Optional[ResumePoint]) -> Bundle:
    if point is None:
        return Bundle(source, name=name)
    m = point.member
    header = CpioHeader(name=m.name, size=m.size, mode=0o100644, magic=m.magic, checksum=m.checksum,
                        offset=m.header_offset)
    return Bundle.resumed(source, BundleHead(point.description, point.signature), header, point.offset, m.consumed,
                          m.crc_sum, name=name)


def _take_up(plans: Dict[str, _Plan], manifest: Manifest, point: ResumePoint) -> None:
    """Check that `point` still fits this install and mark the members it had finished."""
    plan = plans.get(point.member.name)
    if plan is None or not _resumable(plan, manifest):
        raise ResumeError(f"member {point.member.name!r} is not one an install can go on in", "resume point")
    if tuple(plan.written_paths()) != point.targets:
        raise ResumeError(f"member {point.member.name!r} now goes to {', '.join(plan.written_paths())}, "
                          f"not to {', '.join(point.targets)} as before", "resume point")
    for done in point.done:
        if done.name not in plans:
            raise ResumeError(f"member {done.name!r} is no longer selected", "resume point")
        plans[done.name].result = done
    a = point.artifact
    for _, target in plan.targets:
        sample = read_back(target, a.written, a.sample_bytes)
        if hashlib.sha256(sample).hexdigest() != a.sample_sha256:
            raise ResumeError(f"{target.description} no longer holds what was written there before the "
                              "interruption", "resume point")


def _resumable(plan: _Plan, manifest: Manifest) -> bool:
    """Whether an install can stop inside this member and go on later (see install/resume.py)."""
    return (bool(plan.targets) and not plan.files and not plan.scripts and not manifest.scripts
            and resumable(plan.decoding) and hashstate.available())


def select_manifest(select: SelectFn, request: InstallRequest) -> Manifest:
    board = request.hardware.board if request.hardware else None
    manifest = select(board, request.selection)
    if request.check_hardware:
        if request.hardware is None:
            raise CompatibilityError("hardware revision unknown: give -H BOARD:REV or create /etc/hwrevision")
        manifest.check_hardware(request.hardware)
    # SWUpdate's order: hardware, then version policy; skipped entries leave the manifest, so
    # their members are read and dropped like any member outside the selection.
    return apply_version_policy(manifest, request.version_policy)


def plan_entries(manifest: Manifest, request: InstallRequest) -> Dict[str, _Plan]:
    """Every check that does not need image bytes, before anything is written."""
    plans: Dict[str, _Plan] = {}
    for image in manifest.images:
        if image.type == "raw" and property_flag(image, "resize"):
            # An ext4 image SWUpdate writes raw (it ignores the property); otad also checks and grows it.
            image = replace(image, type="ext4")
        target = _plan_image(image, request)
        plan = plans.get(image.filename)
        decoding = decoding_for(image, request)
        expected_size = _declared_size(image)
        if plan is None:
            plan = plans[image.filename] = _Plan(image.filename, image.sha256, decoding, expected_size)
        elif (plan.sha256, plan.decoding) != (image.sha256, decoding):
            raise ManifestError(f"entries for {image.filename!r} disagree on sha256, compression or encryption")
        plan.targets.append((image, target))
    for entry in manifest.files:
        file_target = _plan_file(entry, request)
        _join(plans, entry, request).files.append((entry, file_target))
    for script in manifest.scripts:
        _plan_script(script, request)
        _join(plans, script, request).scripts.append(script)
    return plans


def handler_options(request: InstallRequest, heartbeat: Optional[Callable[[], None]] = None) -> HandlerOptions:
    return HandlerOptions(work_dir=request.work_dir, ext4_resize=request.ext4_resize, files_via=request.files_via,
                          mountinfo=request.mountinfo, zstd_max_window=request.zstd_max_window, heartbeat=heartbeat)


def _join(plans: Dict[str, _Plan], entry: Entry, request: InstallRequest) -> _Plan:
    """The plan of `entry`'s member. A member feeds entries of one kind only: an image is
    streamed to its device, a file to its path, a script to a private copy."""
    kind = "file" if isinstance(entry, File) else "script"
    decoding = decoding_for(entry, request)
    plan = plans.get(entry.filename)
    if plan is None:
        plan = plans[entry.filename] = _Plan(entry.filename, entry.sha256, decoding, None)
    elif (plan.targets or plan.files) if kind == "script" else (plan.targets or plan.scripts):
        raise ManifestError(f"{entry.filename!r} is referenced by a {kind} entry and by another kind of entry; "
                            "a member feeds images, files or scripts, not a mix")
    elif (plan.sha256, plan.decoding) != (entry.sha256, decoding):
        raise ManifestError(f"entries for {entry.filename!r} disagree on sha256, compression or encryption")
    return plan


def _plan_file(entry: File, request: InstallRequest) -> FileTarget:
    where = f"file {entry.filename!r}"
    if request.verifier is not None and entry.sha256 is None:
        raise ImageError("no sha256 in sw-description (required for a signed bundle)", entry.filename, where)
    handler_class = FILE_HANDLERS.get(entry.type)
    if handler_class is None:
        raise ImageError(f"no files handler for type {entry.type!r} (have: {', '.join(sorted(FILE_HANDLERS))})",
                         entry.filename, where)
    try:
        target = handler_class(request.device_dir, handler_options(request)).plan(entry)
    except OtadError as exc:
        if exc.where is None or not exc.where.startswith(where):
            exc.within(where)
        raise
    _check_file_not_protected(target, request.protected_paths)
    return target


def _check_file_not_protected(target: FileTarget, protected: Tuple[str, ...]) -> None:
    """The running slot is off limits to files too: by device, or (no device) by the
    filesystem the destination lies on."""
    where = f"file {target.entry!r}"
    if target.device is not None:
        real = os.path.realpath(target.device)
        if any(real == os.path.realpath(path) for path in protected):
            raise InstallError(f"refusing to write into {target.device}: it is in use (the running slot)", where)
        return
    existing = target.dest
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    on_device = os.stat(existing).st_dev
    for path in protected:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == on_device:
            raise InstallError(f"refusing to write {target.dest}: it is on {path}, the running slot; give the "
                               "inactive slot as device (with filesystem) instead", where)


def _plan_script(script: Script, request: InstallRequest) -> None:
    where = f"script {script.filename!r}"
    script_phases(script)  # refuses lua and unknown types
    if request.verifier is not None and script.sha256 is None:
        raise ImageError("no sha256 in sw-description (required for a signed bundle)", script.filename, where)
    if request.work_dir is None and not request.dry_run:
        raise InstallError("scripts need a private directory on disk (system.state_dir); none configured", where)


def decoding_for(entry: Entry, request: InstallRequest) -> Decoding:
    """How an entry's stored bytes become what is written. An encrypted entry the device cannot
    decrypt (no key configured, or neither an ivt nor a key-file IV) is refused here, in planning."""
    decoding = Decoding(getattr(entry, "compressed", None), request.zstd_max_window, entry.encrypted,
                        request.aes_key if entry.encrypted else None, entry.ivt if entry.encrypted else None)
    if decoding.encrypted:
        decoding.aes_iv(entry.filename)
    return decoding


def _plan_image(image: Image, request: InstallRequest) -> RawTarget:
    if request.verifier is not None and image.sha256 is None:
        raise ImageError("no sha256 in sw-description (required for a signed bundle)", image.filename)
    handler_class = HANDLERS.get(image.type)
    if handler_class is None:
        raise ImageError(f"no handler for type {image.type!r} (have: {', '.join(sorted(HANDLERS))})",
                         image.filename)
    try:
        target = handler_class(request.device_dir).plan(image)
    except OtadError as exc:
        raise exc.within(f"image {image.filename!r}")
    _check_not_protected(target, image, request.protected_paths)
    return target


def _check_not_protected(target: RawTarget, image: Image, protected: Tuple[str, ...]) -> None:
    real = os.path.realpath(target.path)
    for path in protected:
        if real == os.path.realpath(path):
            raise InstallError(f"refusing to write {target.path}: it is in use (the running slot or the boot "
                               "environment)", f"image {image.filename!r}")


def _declared_size(image: Image) -> Optional[int]:
    text = image.properties.get("decompressed-size")
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ImageError(f"properties.decompressed-size: expected a number, got {text!r}", image.filename) from None


class _Run:
    """One pass over the artifacts, in archive order, in SWUpdate's phases as far as a stream
    allows: pre-install scripts → images → files → post-install scripts (bootenv: the caller).

    A stream cannot be reordered, so the archive must already be in that order: every
    pre-install script (preinstall, shellscript) before the first image or file member, every
    files member after the last image member. A bundle that breaks this is refused when the
    offending member arrives, before it is written.
    """

    def __init__(self, bundle: Bundle, plans: Dict[str, _Plan], manifest: Manifest, request: InstallRequest,
                 status: TargetStatusStore, scripts: ScriptRunner, options: HandlerOptions,
                 resuming: Resuming = Resuming(), head: Optional[BundleHead] = None) -> None:
        self.bundle = bundle
        self.plans = plans
        self.manifest = manifest
        self.request = request
        self.status = status
        self.scripts = scripts
        self.options = options
        self.pre_done = False
        self.resuming = resuming  # its point is used by the first member streamed, then dropped
        self.head = head  # what resume points carry, to be verified again

    def stream(self, progress: ProgressListener, total_bytes: Optional[int]) -> Tuple[ArtifactResult, ...]:
        touched: List[str] = []
        try:
            for member in self.bundle.artifacts():
                plan = self.plans.get(member.name)
                if plan is None or plan.result is not None:
                    log.debug("skipping member %r: not in the selection", member.name)
                    member.skip()
                    continue
                self._before(plan)
                log.info("installing %s (%d bytes stored) to %s", member.name, member.size,
                         ", ".join(plan.descriptions() or ["a private copy"]))

                def on_bytes(_n: int, item: str = member.name) -> None:
                    progress(Progress("image", item, self.bundle.bytes_read, total_bytes))

                touched += plan.written_paths()
                point, self.resuming = self.resuming.point, replace(self.resuming, point=None)
                plan.result = self._install_artifact(member, plan, on_bytes, point)
                crashpoint.reached("install.artifact_written")
            missing = [p.filename for p in self.plans.values() if p.result is None]
            if missing:
                raise ImageError("required image is missing from the bundle", missing[0])
            self._run_phase(PREINST)  # a bundle of scripts only
            self._run_phase(POSTINST)
        except OtadError as exc:
            # A later failure (bad member, missing image, failed script) voids what was already
            # written: the bundle as a whole did not install, so no target of it counts as installed.
            if not self.request.dry_run:
                for path in touched:
                    self.status.mark(path, FAILED, version=self.manifest.version, reason=str(exc))
            raise
        return tuple(p.result for p in self.plans.values() if p.result is not None)

    def _before(self, plan: _Plan) -> None:
        """Order checks for a member about to be written; pre-install scripts run before the first."""
        if plan.scripts:
            return
        for script in self.manifest.scripts:
            if PREINST in script_phases(script) and self.plans[script.filename].result is None:
                raise BundleFormatError(
                    f"{script.type} script {script.filename!r} must come before {plan.filename!r} in the archive: "
                    "otad installs while it reads, and pre-install scripts run before the first image or file")
        if plan.files:
            for other in self.plans.values():
                if other.targets and other.result is None:
                    raise BundleFormatError(
                        f"files entry {plan.filename!r} must come after image {other.filename!r} in the archive: "
                        "files are installed after images")
        self._run_phase(PREINST)

    def _run_phase(self, phase: str) -> None:
        if phase == PREINST:
            if self.pre_done:
                return
            self.pre_done = True
        self.scripts.run_phase(phase, self.manifest.scripts)

    def _install_artifact(self, member: CpioMember, plan: _Plan, on_bytes: OnBytes,
                          point: Optional[ResumePoint]) -> ArtifactResult:
        # Install records are about targets: files only void (on failure) the device they write into.
        paths = [target.path for _, target in plan.targets]
        if not self.request.dry_run:
            for path in paths:
                self.status.mark(path, INSTALLING, version=self.manifest.version)
        resume = None
        if point is not None:
            a = point.artifact
            resume = StreamPosition(ResumableHash("sha256", a.stored_hash, a.stored_count), a.stored_count, a.written,
                                    b"")
            log.info("resuming %s at byte %d of its %d stored bytes (%d bytes written)", member.name, a.stored_count,
                     member.size, a.written)
        with self._open_sinks(plan, resume.written if resume else 0) as sink:
            checkpoints = self._checkpoints(member, plan, sink)
            result = stream_artifact(member, plan.filename, plan.sha256, plan.decoding, sink,
                                     chunk=self.request.chunk_bytes, on_bytes=on_bytes,
                                     expected_size=plan.expected_size, resume=resume, checkpoints=checkpoints)
        if not self.request.dry_run:
            for path in paths:
                self.status.mark(path, INSTALLED, version=self.manifest.version, sha256=result.sha256)
        return result

    def _checkpoints(self, member: CpioMember, plan: _Plan, sink: Sink) -> Optional[Checkpoints]:
        save, head = self.resuming.save, self.head
        if (save is None or head is None or self.request.dry_run or not _resumable(plan, self.manifest)
                or len(head.raw) + len(head.signature or b"") > MAX_HEAD_BYTES):
            return None
        done = tuple(p.result for p in self.plans.values() if p.result is not None)
        h = member.header

        def checkpoint(at: StreamPosition) -> None:
            if member.remaining == 0:
                return  # the member is about to end: nothing left to resume in it
            sink.sync()  # type: ignore[attr-defined]  # resumable plans write raw/ext4 sinks only
            sample = at.last_chunk[-SAMPLE_BYTES:]
            save(ResumePoint(
                head.raw, head.signature, self.bundle.bytes_read,
                MemberPosition(h.name, h.size, h.magic, h.checksum, h.offset, h.size - member.remaining,
                               member.crc_sum),
                ArtifactPosition(at.stored_sha256.state(), at.stored_count, at.written,
                                 hashlib.sha256(sample).hexdigest(), len(sample)),
                tuple(plan.written_paths()), done))
            crashpoint.reached("install.checkpoint_saved")

        return Checkpoints(self.resuming.every_bytes, checkpoint)

    @contextmanager
    def _open_sinks(self, plan: _Plan, start: int = 0) -> Iterator[Sink]:
        dry_run = self.request.dry_run
        device_dir = self.request.device_dir
        with ExitStack() as stack:
            sinks: List[Sink] = []
            for image, target in plan.targets:
                handler = HANDLERS[image.type](device_dir, self.options)
                sinks.append(stack.enter_context(handler.open(target, dry_run=dry_run, start=start)))
            for entry, file_target in plan.files:
                file_handler = FILE_HANDLERS[entry.type](device_dir, self.options)
                sinks.append(stack.enter_context(file_handler.open(file_target, dry_run=dry_run)))
            if plan.scripts:
                sinks.append(stack.enter_context(self.scripts.open(plan.filename)))
            yield sinks[0] if len(sinks) == 1 else _TeeSink(sinks)


class _TeeSink:
    """One decoded stream written to several targets (one member, several entries)."""

    def __init__(self, sinks: List[Sink]) -> None:
        self._sinks = sinks
        capacities = [s.capacity for s in sinks if s.capacity is not None]
        self.capacity: Optional[int] = min(capacities) if capacities else None

    def write(self, data: bytes) -> None:
        for sink in self._sinks:
            sink.write(data)

    def sync(self) -> None:
        for sink in self._sinks:
            sink.sync()  # type: ignore[attr-defined]
