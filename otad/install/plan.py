"""Plan an install: every check that needs no image bytes, before the first byte is written.

SWUpdate's order: selection → hardware → version policy → every entry planned (handler,
sha256 present, target exists and is big enough, not a protected path, AES key for encrypted
ones, scripts runnable) → the caller's own checks (`InstallRequest.checks`: the A/B target, the
bootenv rules). `otad install` and `otad info` both go through `plan_install`, so a bundle
`info` accepts is one `install` accepts, and every refusal comes before anything is written.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from otad.errors import REFUSED, CompatibilityError, ImageError, InstallError, ManifestError, OtadError
from otad.install.chunks import DeltaOptions
from otad.install.handlers import FILE_HANDLERS, HANDLERS, HandlerOptions
from otad.install.handlers.ext4 import property_flag
from otad.install.handlers.files import FileTarget
from otad.install.handlers.raw import RawTarget, resolve_device
from otad.install.pipeline import DEFAULT_CHUNK, ArtifactResult, Decoding
from otad.install.scripts import script_phases
from otad.install.versionpolicy import VersionPolicy
from otad.install.versionpolicy import apply as apply_version_policy
from otad.swu.crypto import AesKey
from otad.swu.manifest import Entry, File, HardwareRevision, Image, Manifest, Script

if TYPE_CHECKING:  # cryptography loads on first use: the idle daemon stays small
    from otad.swu.signature import Verifier

SelectFn = Callable[[Optional[str], Optional[Tuple[str, str]]], Manifest]
PlanCheck = Callable[["InstallPlan"], None]


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
    # the caller's own refusals (A/B target, bootenv rules), run last; each raises an OtadError
    checks: Tuple[PlanCheck, ...] = ()
    delta: DeltaOptions = DeltaOptions()  # delta images: where chunks come from, cached indexes


@dataclass
class MemberPlan:
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

    @property
    def delta(self) -> Optional[Tuple[Image, RawTarget]]:
        """The delta image this member is the zchunk header of (then it feeds nothing else)."""
        return self.targets[0] if self.targets and self.targets[0][0].delta is not None else None

    def delta_images(self) -> List[Image]:
        return [image for image, _ in self.targets if image.delta is not None]


@dataclass(frozen=True)
class InstallPlan:
    """What an install will do: the selected manifest and, per CPIO member, what it feeds."""

    manifest: Manifest
    members: Dict[str, MemberPlan] = field(hash=False)

    def target_paths(self) -> Tuple[str, ...]:
        """Every path the install writes (image targets, files), in manifest order."""
        return tuple(path for member in self.members.values() for path in member.paths())


def plan_install(select: SelectFn, request: InstallRequest) -> InstallPlan:
    """Decide everything the sw-description and this device decide, before a byte is written.

    Any refusal is an OtadError whose exit status says "refused, nothing written" (errors.REFUSED)
    unless its family has its own (configuration 2, verification 4).
    """
    try:
        manifest = select_manifest(select, request)
        plan = InstallPlan(manifest, plan_entries(manifest, request))
        for check in request.checks:
            check(plan)
    except OtadError as exc:
        raise exc.at_stage(REFUSED)
    return plan


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


def plan_entries(manifest: Manifest, request: InstallRequest) -> Dict[str, MemberPlan]:
    """Every check that does not need image bytes, before anything is written."""
    plans: Dict[str, MemberPlan] = {}
    for image in manifest.images:
        if image.type == "raw" and property_flag(image, "resize"):
            # An ext4 image SWUpdate writes raw (it ignores the property); otad also checks and grows it.
            image = replace(image, type="ext4")
        target = _plan_image(image, request)
        plan = plans.get(image.filename)
        decoding = decoding_for(image, request)
        expected_size = _declared_size(image)
        if plan is None:
            plan = plans[image.filename] = MemberPlan(image.filename, image.sha256, decoding, expected_size)
        elif (plan.sha256, plan.decoding) != (image.sha256, decoding):
            raise ManifestError(f"entries for {image.filename!r} disagree on sha256, compression or encryption")
        plan.targets.append((image, target))
        if plan.delta_images() and len(plan.targets) > 1:
            raise ManifestError(f"{image.filename!r} is the zchunk header of a delta image and is referenced again; "
                                "a delta header feeds exactly one image")
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


def _join(plans: Dict[str, MemberPlan], entry: Entry, request: InstallRequest) -> MemberPlan:
    """The plan of `entry`'s member. A member feeds entries of one kind only: an image is
    streamed to its device, a file to its path, a script to a private copy."""
    kind = "file" if isinstance(entry, File) else "script"
    decoding = decoding_for(entry, request)
    plan = plans.get(entry.filename)
    if plan is None:
        plan = plans[entry.filename] = MemberPlan(entry.filename, entry.sha256, decoding, None)
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
    if image.delta is not None:
        return _plan_delta(image, request)
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


def _plan_delta(image: Image, request: InstallRequest) -> RawTarget:
    """A delta image: written by its chain handler to `device`, from chunks of `source` and fetched ones."""
    assert image.delta is not None
    if request.verifier is None:
        raise ImageError("a delta image needs a signed bundle: its chunks are checked only against the zchunk "
                         "header the signed sw-description names (unsigned bundles are not enough)", image.filename)
    try:
        target = HANDLERS[image.delta.chain](request.device_dir).plan(image)
    except OtadError as exc:
        raise exc.within(f"image {image.filename!r}")
    _check_not_protected(target, image, request.protected_paths)
    source = resolve_device(image.delta.source, request.device_dir)
    try:
        os.close(os.open(source, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise InstallError(f"properties.source {image.delta.source}: cannot be read: {exc.strerror}",
                           f"image {image.filename!r}") from exc
    if os.path.realpath(source) == os.path.realpath(target.path):
        raise CompatibilityError(f"properties.source {image.delta.source} is the device the image is written to; "
                                 "a delta reads unchanged chunks from another one (the running slot)",
                                 f"image {image.filename!r}")
    return target


def delta_source(image: Image, device_dir: str) -> str:
    """The path a delta image's `source` names, as `device` paths resolve."""
    assert image.delta is not None
    return resolve_device(image.delta.source, device_dir)


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


