"""Install one bundle: check everything that can be checked, then stream the images.

The order is SWUpdate's: signature → selection → hardware → every entry planned (handler,
hash, target size) before the first byte is written → artifacts streamed in archive order →
every selected artifact seen → targets synced. The boot environment is not touched here:
the bootenv pairs travel in the result and the caller applies them last, in one write.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from otad.errors import CompatibilityError, ImageError, InstallError, ManifestError, OtadError
from otad.install.handlers import HANDLERS
from otad.install.handlers.raw import RawHandler, RawTarget
from otad.install.pipeline import DEFAULT_CHUNK, ArtifactResult, Decoding, Reader, Sink, stream_artifact
from otad.install.status import FAILED, INSTALLED, INSTALLING, TargetStatusStore
from otad.progress import Progress, ProgressListener, ignore
from otad.swu.bundle import SW_DESCRIPTION, Bundle
from otad.swu.manifest import BootenvVar, HardwareRevision, Image, Manifest
from otad.swu.signature import SignerInfo, Verifier

log = logging.getLogger(__name__)

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


def install_bundle(source: Reader, request: InstallRequest, *, name: str = "bundle",
                   total_bytes: Optional[int] = None, progress: ProgressListener = ignore,
                   status: Optional[TargetStatusStore] = None) -> InstallResult:
    """Install the bundle read from `source`. Raises an OtadError naming the bundle and image."""
    started = time.monotonic()
    status = status if status is not None else TargetStatusStore(None)
    try:
        bundle = Bundle(source, name=name)
        progress(Progress("verify", SW_DESCRIPTION, 0, total_bytes))
        verified = bundle.open_description(request.verifier)
        manifest = select_manifest(verified.description.select, request)
        plans = plan_entries(manifest, request)
        results = _stream(bundle, plans, manifest, request, status, progress, total_bytes)
    except OtadError as exc:
        if exc.where is None or not exc.where.startswith(name):
            exc.within(name)
        raise
    progress(Progress("done", None, bundle.bytes_read, total_bytes))
    targets = tuple(t.path for plan in plans.values() for _, t in plan.targets)
    return InstallResult(manifest, verified.signer, results, targets, manifest.bootenv, request.dry_run,
                         time.monotonic() - started)


def select_manifest(select: SelectFn, request: InstallRequest) -> Manifest:
    board = request.hardware.board if request.hardware else None
    manifest = select(board, request.selection)
    if request.check_hardware:
        if request.hardware is None:
            raise CompatibilityError("hardware revision unknown: give -H BOARD:REV or create /etc/hwrevision")
        manifest.check_hardware(request.hardware)
    return manifest


def plan_entries(manifest: Manifest, request: InstallRequest) -> Dict[str, _Plan]:
    """Every check that does not need image bytes, before anything is written."""
    if manifest.scripts:
        raise CompatibilityError(f"scripts are not supported yet (found {manifest.scripts[0].filename!r})")
    if manifest.files:
        raise CompatibilityError(f"files entries are not supported yet (found {manifest.files[0].filename!r})")
    plans: Dict[str, _Plan] = {}
    for image in manifest.images:
        target = _plan_image(image, request)
        plan = plans.get(image.filename)
        decoding = Decoding(image.compressed, request.zstd_max_window)
        expected_size = _declared_size(image)
        if plan is None:
            plan = plans[image.filename] = _Plan(image.filename, image.sha256, decoding, expected_size)
        elif (plan.sha256, plan.decoding) != (image.sha256, decoding):
            raise ManifestError(f"entries for {image.filename!r} disagree on sha256 or compression")
        plan.targets.append((image, target))
    return plans


def _plan_image(image: Image, request: InstallRequest) -> RawTarget:
    if image.encrypted:
        raise ImageError("encrypted images are not supported yet", image.filename)
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


def _stream(bundle: Bundle, plans: Dict[str, _Plan], manifest: Manifest, request: InstallRequest,
            status: TargetStatusStore, progress: ProgressListener,
            total_bytes: Optional[int]) -> Tuple[ArtifactResult, ...]:
    touched: List[str] = []
    try:
        for member in bundle.artifacts():
            plan = plans.get(member.name)
            if plan is None or plan.result is not None:
                log.debug("skipping member %r: not in the selection", member.name)
                member.skip()
                continue
            log.info("installing %s (%d bytes stored) to %s", member.name, member.size,
                     ", ".join(t.description for _, t in plan.targets))

            def on_bytes(_n: int, item: str = member.name) -> None:
                progress(Progress("image", item, bundle.bytes_read, total_bytes))

            touched += [target.path for _, target in plan.targets]
            plan.result = _install_artifact(member, plan, manifest, request, status, on_bytes)
        missing = [p.filename for p in plans.values() if p.result is None]
        if missing:
            raise ImageError("required image is missing from the bundle", missing[0])
    except OtadError as exc:
        # A later failure (bad member, missing image) voids what was already written: the
        # bundle as a whole did not install, so no target of it may count as installed.
        if not request.dry_run:
            for path in touched:
                status.mark(path, FAILED, version=manifest.version, reason=str(exc))
        raise
    return tuple(p.result for p in plans.values() if p.result is not None)


def _install_artifact(member: Reader, plan: _Plan, manifest: Manifest, request: InstallRequest,
                      status: TargetStatusStore, on_bytes: OnBytes) -> ArtifactResult:
    handler = RawHandler(request.device_dir)
    paths = [target.path for _, target in plan.targets]
    if not request.dry_run:
        for path in paths:
            status.mark(path, INSTALLING, version=manifest.version)
    with _open_sinks(handler, [t for _, t in plan.targets], request.dry_run) as sink:
        result = stream_artifact(member, plan.filename, plan.sha256, plan.decoding, sink,
                                 chunk=request.chunk_bytes, on_bytes=on_bytes,
                                 expected_size=plan.expected_size)
    if not request.dry_run:
        for path in paths:
            status.mark(path, INSTALLED, version=manifest.version, sha256=result.sha256)
    return result


class _TeeSink:
    """One decoded stream written to several targets (one member, several entries)."""

    def __init__(self, sinks: List[Sink]) -> None:
        self._sinks = sinks
        capacities = [s.capacity for s in sinks if s.capacity is not None]
        self.capacity: Optional[int] = min(capacities) if capacities else None

    def write(self, data: bytes) -> None:
        for sink in self._sinks:
            sink.write(data)


@contextmanager
def _open_sinks(handler: RawHandler, targets: List[RawTarget], dry_run: bool) -> Iterator[Sink]:
    with ExitStack() as stack:
        sinks: List[Sink] = [stack.enter_context(handler.open(t, dry_run=dry_run)) for t in targets]
        yield sinks[0] if len(sinks) == 1 else _TeeSink(sinks)
