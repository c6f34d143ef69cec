"""What `otad info` reports about a bundle: description, selections, images, verification.

Reads the whole bundle once (bounded memory), checks the signature if a verifier is given,
hashes every member as stored and matches the hashes against every selection's entries.
Unlike an install, a failed check is reported in the result instead of stopping the read.
The verdict comes from the caller's `plan` (the install's own planning, `update.plan`), run on
the verified sw-description: a refusal there is the one `install` would give.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from otad.errors import REFUSED, VERIFICATION, BundleError, BundleFormatError, OtadError
from otad.swu.bundle import Bundle
from otad.swu.cpio import SupportsRead
from otad.swu.manifest import Entry, File, Image, Manifest, SwDescription, parse
from otad.swu.signature import SignerInfo, Verifier

PlanFn = Callable[[SwDescription], object]  # raises the OtadError `install` would refuse with
# For a member name: how to describe that member's plan on this device (a delta image's header:
# what it would reuse and fetch), or None; the describer gets the member's bytes.
DeltaFn = Callable[[str], Optional[Callable[[bytes], str]]]
MAX_PREVIEW_BYTES = 32 << 20  # a delta header's limit (otad.delta.zck.Limits)


@dataclass(frozen=True)
class MemberInfo:
    name: str
    stored_bytes: int
    sha256: str


@dataclass(frozen=True)
class EntryInfo:
    kind: str  # image, file, script
    filename: str
    type: str
    target: Optional[str]
    compressed: Optional[str]
    encrypted: bool
    sha256: Optional[str]
    stored_bytes: Optional[int]  # None: no such member in the bundle
    hash_ok: Optional[bool]  # None: nothing to compare
    ivt: Optional[str] = None  # an encrypted entry's own IV; None: the key file's IV is used
    name: Optional[str] = None  # component name and version, matched against sw-versions
    version: Optional[str] = None
    install_if: Optional[str] = None  # "different", "higher" or None: when sw-versions lets it install
    plan: Optional[str] = None  # a delta image: what it would reuse and fetch here

    @property
    def version_gate(self) -> Optional[str]:
        """`install-if-higher` etc. when the entry is gated (SWUpdate ignores a flag without name and version)."""
        return f"install-if-{self.install_if}" if self.install_if and self.name and self.version else None


@dataclass(frozen=True)
class SelectionInfo:
    selection: Optional[Tuple[str, str]]
    board: Optional[str]
    version: str
    hardware_compatibility: Tuple[str, ...]
    entries: Tuple[EntryInfo, ...]
    bootenv: Dict[str, str]


@dataclass(frozen=True)
class BundleInfo:
    name: str
    version: str
    description: str
    signature: str  # "verified", "not checked" or "FAILED: why"
    signer: Optional[SignerInfo]
    selections: Tuple[SelectionInfo, ...]
    members: Tuple[MemberInfo, ...]
    problems: Tuple[str, ...] = field(default=())
    refused: Optional[str] = None  # why `install` would refuse the bundle before writing anything
    exit_code: int = 0  # `install`'s exit status for that refusal; else 4 for a problem, else 0

    @property
    def ok(self) -> bool:
        return not self.problems and self.refused is None

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def inspect_bundle(source: SupportsRead, *, name: str, verifier: Optional[Verifier],
                   board: Optional[str] = None, plan: Optional[PlanFn] = None,
                   delta: Optional[DeltaFn] = None) -> BundleInfo:
    """What the bundle holds and, given `plan`, whether `install` would take it on this device
    (and, given `delta`, what its delta images would reuse and fetch)."""
    bundle = Bundle(source, name=name)
    try:
        head = bundle.read_head()
        description = parse(head.raw, source="sw-description")
    except OtadError as exc:
        raise exc.at_stage(REFUSED)
    problems: List[str] = []
    signer: Optional[SignerInfo] = None
    refusal: Optional[OtadError] = None
    signature = "not checked"
    if verifier is not None:
        try:
            signer = bundle.verify(head, verifier)  # what `install` checks, in the same words
            signature = "verified"
        except OtadError as exc:
            signature = f"FAILED: {exc.what}"
            refusal = exc.within_once(name)
    if signature.startswith("FAILED"):
        problems.append(f"signature {signature}")
    if plan is not None and refusal is None:
        try:
            plan(description)
        except OtadError as exc:
            refusal = exc
    plans: Dict[str, str] = {}
    members = _hash_members(bundle, problems, delta if refusal is None else None, plans)
    manifests = _manifests(description, board, problems)
    selections = tuple(_selection_info(m, members, problems, plans) for m in manifests)
    version, text = (manifests[0].version, manifests[0].description) if manifests else ("", "")
    refused = None if refusal is None else str(refusal)
    exit_code = refusal.at_stage(REFUSED).exit_code if refusal is not None else VERIFICATION if problems else 0
    return BundleInfo(name, version, text, signature, signer, selections, tuple(members.values()), tuple(problems),
                      refused, exit_code)


def _hash_members(bundle: Bundle, problems: List[str], delta: Optional[DeltaFn],
                  plans: Dict[str, str]) -> Dict[str, MemberInfo]:
    members: Dict[str, MemberInfo] = {}
    try:
        for member in bundle.artifacts():
            describe = delta(member.name) if delta is not None and member.size <= MAX_PREVIEW_BYTES else None
            if describe is not None:
                data = member.read_all(MAX_PREVIEW_BYTES)
                digest = hashlib.sha256(data)
                try:
                    plans[member.name] = describe(data)
                except OtadError as exc:
                    problems.append(str(exc))
            else:
                digest = hashlib.sha256()
                for chunk in member.chunks():
                    digest.update(chunk)
            members.setdefault(member.name, MemberInfo(member.name, member.size, digest.hexdigest()))
    except BundleFormatError as exc:
        problems.append(str(exc))
    return members


def _manifests(description: SwDescription, board: Optional[str], problems: List[str]) -> List[Manifest]:
    wanted: List[Optional[Tuple[str, str]]] = list(description.selections()) or [None]
    manifests = []
    for selection in wanted:
        try:
            manifests.append(description.select(board, selection))
        except BundleError as exc:
            problems.append(str(exc))
    return manifests


def _selection_info(manifest: Manifest, members: Dict[str, MemberInfo], problems: List[str],
                    plans: Dict[str, str]) -> SelectionInfo:
    entries = []
    for entry in manifest.entries():
        member = members.get(entry.filename)
        hash_ok = None if member is None or entry.sha256 is None else member.sha256 == entry.sha256
        if member is None:
            problems.append(f"{_label(manifest)}: {entry.filename!r} is missing from the bundle")
        elif hash_ok is False:
            problems.append(f"{_label(manifest)}: {entry.filename!r}: sha256 mismatch")
        kind = type(entry).__name__.lower()
        target = _target(entry)
        entries.append(EntryInfo(kind, entry.filename, entry.type, target, getattr(entry, "compressed", None),
                                 entry.encrypted, entry.sha256, member.stored_bytes if member else None, hash_ok,
                                 ivt=entry.ivt, name=getattr(entry, "name", None),
                                 version=getattr(entry, "version", None), install_if=_install_if(entry),
                                 plan=plans.get(entry.filename) if getattr(entry, "delta", None) else None))
    return SelectionInfo(manifest.selection, manifest.board, manifest.version, manifest.hardware_compatibility,
                         tuple(entries), {v.name: v.value for v in manifest.bootenv})


def _install_if(entry: Entry) -> Optional[str]:
    if getattr(entry, "install_if_higher", False):
        return "higher"
    return "different" if getattr(entry, "install_if_different", False) else None


def _label(manifest: Manifest) -> str:
    return ",".join(manifest.selection) if manifest.selection else "default"


def _target(entry: Entry) -> Optional[str]:
    """Where an entry goes: an image's device, a file's path (inside its device, if it has
    one), nothing for a script."""
    if isinstance(entry, File):
        if entry.device:
            return f"{entry.path or '?'} on {entry.device} ({entry.filesystem or 'no filesystem'})"
        return entry.path
    if isinstance(entry, Image):
        return entry.device
    return None
