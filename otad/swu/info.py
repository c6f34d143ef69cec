"""What `otad info` reports about a bundle: description, selections, images, verification.

Reads the whole bundle once (bounded memory), checks the signature if a verifier is given,
hashes every member as stored and matches the hashes against every selection's entries.
Unlike an install, a failed check is reported in the result instead of stopping the read.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from otad.errors import BundleFormatError, CompatibilityError, OtadError
from otad.swu.bundle import Bundle
from otad.swu.cpio import SupportsRead
from otad.swu.manifest import Entry, File, Image, Manifest, SwDescription, parse
from otad.swu.signature import SignerInfo, Verifier


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

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def inspect_bundle(source: SupportsRead, *, name: str, verifier: Optional[Verifier],
                   board: Optional[str] = None) -> BundleInfo:
    bundle = Bundle(source, name=name)
    head = bundle.read_head()
    problems: List[str] = []
    signer: Optional[SignerInfo] = None
    if verifier is None:
        signature = "not checked"
    elif head.signature is None:
        signature = "FAILED: bundle is not signed"
    else:
        try:
            signer = verifier.verify(head.raw, head.signature)
            signature = "verified"
        except OtadError as exc:
            signature = f"FAILED: {exc.what}"
    if signature.startswith("FAILED"):
        problems.append(f"signature {signature}")
    description = parse(head.raw, source="sw-description")
    members = _hash_members(bundle, problems)
    manifests = _manifests(description, board, problems)
    selections = tuple(_selection_info(m, members, problems) for m in manifests)
    version, text = (manifests[0].version, manifests[0].description) if manifests else ("", "")
    return BundleInfo(name, version, text, signature, signer, selections, tuple(members.values()), tuple(problems))


def _hash_members(bundle: Bundle, problems: List[str]) -> Dict[str, MemberInfo]:
    members: Dict[str, MemberInfo] = {}
    try:
        for member in bundle.artifacts():
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
        except CompatibilityError as exc:
            problems.append(str(exc))
    return manifests


def _selection_info(manifest: Manifest, members: Dict[str, MemberInfo], problems: List[str]) -> SelectionInfo:
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
                                 version=getattr(entry, "version", None), install_if=_install_if(entry)))
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
