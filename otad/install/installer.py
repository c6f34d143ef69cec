"""Install one bundle: verify → plan → stream.

The order is SWUpdate's: signature → the plan (`install/plan.py`: selection, hardware,
version policy, every entry, the caller's checks) before the first byte is written → artifacts
streamed in archive order → every selected artifact seen → targets synced. The boot
environment is not touched here: the bootenv pairs travel in the result and the caller applies
them last, in one write.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Tuple

from otad import crashpoint, hashstate
from otad.errors import REFUSED, WRITE_FAILED, BundleFormatError, ImageError, Interrupted, OtadError, ResumeError
from otad.hashstate import ResumableHash
from otad.install.handlers import FILE_HANDLERS, HANDLERS, HandlerOptions
from otad.install.handlers.raw import read_back
from otad.install.pipeline import (ArtifactResult, Checkpoints, Reader, Sink, StreamPosition, resumable,
                                   stream_artifact)
from otad.install.plan import InstallRequest, MemberPlan, handler_options, plan_install
from otad.install.resume import MAX_HEAD_BYTES, ArtifactPosition, MemberPosition, ResumePoint
from otad.install.scripts import POSTINST, PREINST, ScriptRunner, script_phases
from otad.install.status import FAILED, INSTALLED, INSTALLING, INTERRUPTED, TargetState, TargetStatusStore
from otad.progress import Progress, ProgressListener, ignore
from otad.swu.bundle import SW_DESCRIPTION, Bundle, BundleHead
from otad.swu.cpio import CpioHeader, CpioMember
from otad.swu.manifest import BootenvVar, Manifest

__all__ = ["InstallRequest", "InstallResult", "Resuming", "install_bundle"]

if TYPE_CHECKING:  # cryptography loads on first use: the idle daemon stays small
    from otad.install.delta import DeltaInstall, DeltaReport  # and otad.delta when a bundle has a delta image
    from otad.swu.signature import SignerInfo

log = logging.getLogger(__name__)

SAMPLE_BYTES = 64 << 10  # read back from each target before resuming
NEXT_HEADER_BYTES = 512  # a member's padding and the next cpio header with its name
OnBytes = Callable[[int], None]


@dataclass(frozen=True)
class InstallResult:
    manifest: Manifest
    signer: Optional[SignerInfo]
    images: Tuple[ArtifactResult, ...]
    targets: Tuple[str, ...]  # every path written
    bootenv: Tuple[BootenvVar, ...]
    dry_run: bool
    seconds: float
    deltas: Tuple[DeltaReport, ...] = ()  # what each delta image took from where
    read_to_end: bool = True  # False: the bundle's last member (a delta's chunk data) was not read from it


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
        try:
            verified = bundle.open_description(request.verifier)
            plan = plan_install(verified.description.select, request)
            if resuming.point is not None:
                _take_up(plan.members, plan.manifest, resuming.point)
        except OtadError as exc:
            raise exc.at_stage(REFUSED)
        manifest, plans = plan.manifest, plan.members
        crashpoint.reached("install.planned")  # nothing written yet

        def heartbeat() -> None:  # a script or tool runs and no bytes move: keep the watchdog fed
            progress(Progress("busy", None, bundle.bytes_read, total_bytes))

        with ScriptRunner(request.work_dir, timeout_s=request.script_timeout_s, heartbeat=heartbeat,
                          dry_run=request.dry_run) as scripts:
            run = _Run(bundle, plans, manifest, request, status, scripts, handler_options(request, heartbeat),
                       resuming, BundleHead(verified.raw, verified.signature))
            results = run.stream(progress, total_bytes)
    except OtadError as exc:
        raise exc.within_once(name)
    progress(Progress("done", None, bundle.bytes_read, total_bytes))
    crashpoint.reached("install.done")
    return InstallResult(manifest, verified.signer, results, plan.target_paths(), manifest.bootenv, request.dry_run,
                         time.monotonic() - started, tuple(run.deltas), run.read_to_end)


def _open_bundle(source: Reader, name: str, point: Optional[ResumePoint]) -> Bundle:
    if point is None:
        return Bundle(source, name=name)
    m = point.member
    header = CpioHeader(name=m.name, size=m.size, mode=0o100644, magic=m.magic, checksum=m.checksum,
                        offset=m.header_offset)
    return Bundle.resumed(source, BundleHead(point.description, point.signature), header, point.offset, m.consumed,
                          m.crc_sum, name=name)


def _take_up(plans: Dict[str, MemberPlan], manifest: Manifest, point: ResumePoint) -> None:
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


def _resumable(plan: MemberPlan, manifest: Manifest) -> bool:
    """Whether an install can stop inside this member and go on later (see install/resume.py)."""
    return (bool(plan.targets) and not plan.files and not plan.scripts and not manifest.scripts
            and resumable(plan.decoding) and hashstate.available())


class _Run:
    """One pass over the artifacts, in archive order, in SWUpdate's phases as far as a stream
    allows: pre-install scripts → images → files → post-install scripts (bootenv: the caller).

    A stream cannot be reordered, so the archive must already be in that order: every
    pre-install script (preinstall, shellscript) before the first image or file member, every
    files member after the last image member. A bundle that breaks this is refused when the
    offending member arrives, before it is written.
    """

    def __init__(self, bundle: Bundle, plans: Dict[str, MemberPlan], manifest: Manifest, request: InstallRequest,
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
        self.deltas: List[DeltaReport] = []
        self.waiting: Dict[str, DeltaInstall] = {}  # delta images whose chunk data is a later member, by its name
        self.read_to_end = True

    def stream(self, progress: ProgressListener, total_bytes: Optional[int]) -> Tuple[ArtifactResult, ...]:
        touched: List[str] = []
        acted = False  # an image or file began to be written (scripts that ran count too)
        steps: List[DeltaInstall] = []
        bounded = self._chunks_in_bundle()
        if not bounded:
            self.request.delta.sources.upto(None)
        try:
            for member in self.bundle.artifacts():
                if bounded:  # read no further ahead than this member (and the next one's header)
                    self.request.delta.sources.upto(member.data_offset + member.size + NEXT_HEADER_BYTES)
                if member.name in self.waiting:
                    if self._delta_body(member, self.waiting.pop(member.name), touched):
                        break  # the stream was left for Range requests: nothing after this member is read
                    continue
                plan = self.plans.get(member.name)
                if plan is None or plan.result is not None:
                    log.debug("skipping member %r: not in the selection", member.name)
                    member.skip()
                    continue
                self._before(plan)
                if plan.delta is not None:
                    steps.append(self._delta(member, plan, progress, touched))
                    continue
                log.info("installing %s (%d bytes stored) to %s", member.name, member.size,
                         ", ".join(plan.descriptions() or ["a private copy"]))

                def on_bytes(_n: int, item: str = member.name) -> None:
                    progress(Progress("image", item, self.bundle.bytes_read, total_bytes))

                touched += plan.written_paths()
                acted = acted or bool(plan.targets or plan.files)
                point, self.resuming = self.resuming.point, replace(self.resuming, point=None)
                plan.result = self._install_artifact(member, plan, on_bytes, point)
                crashpoint.reached("install.artifact_written")
            for name, step in self.waiting.items():
                raise ImageError(f"properties.zckfile {name!r}: the chunk data is neither an artifact of the "
                                 "deployment nor a member of the bundle", step.name)
            missing = [p.filename for p in self.plans.values() if p.result is None]
            if missing:
                what = "required image is missing from the bundle" if self.read_to_end else \
                    "comes after the delta image's chunk data, which must be the bundle's last member"
                raise ImageError(what, missing[0])
            self._run_phase(PREINST)  # a bundle of scripts only
            self._run_phase(POSTINST)
            self._mark_file_devices(INSTALLED)
        except OtadError as exc:
            # A later failure (bad member, missing image, failed script) voids what was already
            # written: the bundle as a whole did not install, so no target of it counts as installed.
            if not self.request.dry_run:
                for path in touched:
                    self.status.mark(path, FAILED, version=self.manifest.version, reason=str(exc))
            wrote = not self.request.dry_run and (acted or bool(self.scripts.ran) or any(s.writing for s in steps))
            raise exc.at_stage(WRITE_FAILED if wrote else REFUSED)
        except Interrupted as stop:
            if not self.request.dry_run:
                for path in touched:
                    self.status.mark(path, INTERRUPTED, version=self.manifest.version, reason=stop.verb)
            stop.written = tuple(touched)
            raise
        return tuple(p.result for p in self.plans.values() if p.result is not None)

    def _chunks_in_bundle(self) -> bool:
        """Whether a delta image may take its chunk data from a member of this bundle (the last one)."""
        sources = self.request.delta.sources
        return any(image.delta.url is None and image.delta.zckfile is not None
                   and sources.artifact(image.delta.zckfile) is None
                   for plan in self.plans.values() for image in plan.delta_images() if image.delta is not None)

    def _delta(self, member: CpioMember, plan: MemberPlan, progress: ProgressListener,
               touched: List[str]) -> DeltaInstall:
        """A delta image's header member: checked now; the image is assembled now, or when the
        member holding its chunk data comes (then the stream ends there)."""
        from otad.install.delta import DeltaInstall

        step = DeltaInstall(plan, self.request, self.status, self.options, progress, self.manifest.version)
        step.begin(member)
        if step.waits_for is None:
            plan.result = step.run(touched)
            self._reported(step)
        elif step.waits_for in self.plans or step.waits_for in self.waiting:
            raise ImageError(f"properties.zckfile {step.waits_for!r} is installed by another entry; a delta's "
                             "chunk data is a member of its own", step.name)
        else:
            self.waiting[step.waits_for] = step
        return step

    def _delta_body(self, member: CpioMember, step: DeltaInstall, touched: List[str]) -> bool:
        """The member holding a delta image's chunk data; True when the stream was left there. The
        chunk data of another delta image may follow: then this one is read from the stream."""
        step.member_plan.result = step.run(touched, body=member, stream_only=bool(self.waiting))
        self._reported(step)
        self.read_to_end = not step.left_stream
        return step.left_stream

    def _reported(self, step: DeltaInstall) -> None:
        assert step.report is not None
        self.deltas.append(step.report)
        crashpoint.reached("install.artifact_written")

    def _before(self, plan: MemberPlan) -> None:
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

    def _mark_file_devices(self, state: TargetState, plan: Optional[MemberPlan] = None) -> None:
        """Records for the devices that files entries write into (of `plan`, or of the whole
        bundle) and no image of the bundle targets: INSTALLING before their first file, INSTALLED
        once the whole bundle went through. So a slot that a files-only bundle updated holds that
        version as far as the daemon's deferred arm (update.arm) and `otad status` can tell."""
        if self.request.dry_run:
            return
        imaged = {target.path for other in self.plans.values() for _, target in other.targets}
        plans = [plan] if plan is not None else list(self.plans.values())
        devices = {t.path: None for p in plans for _, t in p.files if t.device is not None and t.path not in imaged}
        for path in devices:
            self.status.mark(path, state, version=self.manifest.version)

    def _install_artifact(self, member: CpioMember, plan: MemberPlan, on_bytes: OnBytes,
                          point: Optional[ResumePoint]) -> ArtifactResult:
        # Install records are about targets; a device that files write into gets one as well
        # (_mark_file_devices), and a failure voids it like an image target.
        paths = [target.path for _, target in plan.targets]
        if not self.request.dry_run:
            for path in paths:
                self.status.mark(path, INSTALLING, version=self.manifest.version)
        self._mark_file_devices(INSTALLING, plan)
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

    def _checkpoints(self, member: CpioMember, plan: MemberPlan, sink: Sink) -> Optional[Checkpoints]:
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
    def _open_sinks(self, plan: MemberPlan, start: int = 0) -> Iterator[Sink]:
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
