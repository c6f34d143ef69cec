"""Delta images in a bundle: each `type = "delta"` entry's image as a .zck, its header as the
entry's member, and what the layout adds (docs/delta.md §4, docs/deploying.md).

Profiles: `compatible` cuts libzck's content-defined chunks (`zck -u -h sha256`, what
swugenerator runs: SWUpdate's devices match them); `fine[:KIB]` cuts fixed chunks aligned to
the filesystem's 4 KiB blocks, which otad matches at every 4 KiB offset of its source (SWUpdate
still installs them, downloading more). Layouts: `self-contained` puts the .zck body into the
bundle as a trailing member, fetched by Range from the bundle's own link, and adds a full-install
mode `MODE-full` beside each mode; `artifact` and `url` write the whole .zck beside the bundle,
for a second hawkBit artifact or a static URL. libzck (ctypes) writes the .zck where it loads,
else otad.delta.zckwriter does (same chunks; compressed bytes may differ by zstd version).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Dict, List, Mapping, Optional, Sequence, Tuple, Union, cast

from otad.errors import ConfigError, DeltaError, OtadError
from otad.mkswu.inputs import chunks, open_source
from otad.mkswu.staging import Digest, StoredArtifact
from otad.mkswu.template import Entry, ModeCopy, Replacement, Set, Template

if TYPE_CHECKING:
    from otad.delta import zck

COMPATIBLE, FINE = "compatible", "fine"
SELF_CONTAINED, ARTIFACT, URL = "self-contained", "artifact", "url"
LAYOUTS = (SELF_CONTAINED, ARTIFACT, URL)
# docs/performance.md ("fine chunk size"): 16 KiB is the smallest download on the 96 MiB fixture
# and within 6 % of the smallest (24 KiB) on the 1 GiB one, where its header is 1.5 MB larger. The
# device's source scan hashes one chunk's length at every 4 KiB: a third less CPU than at 24 KiB,
# which on a Pi Zero (SHA-256 in software) weighs more than those bytes. 8 KiB doubles the header.
FINE_KIB = 16
MAX_FINE_KIB = 1024
BODY_SUFFIX, ZCK_SUFFIX, FULL_SUFFIX = ".zckbody", ".zck", "-full"
IMAGE_SHA256 = "image-sha256"  # otad-only property: the raw image's sha256 (SWUpdate ignores it)
# SWUpdate's delta handler properties (delta_retrieve_attributes), and otad's: not for a full install.
DELTA_PROPERTIES = ("url", "zckfile", "chain", "source", "source-size", "max-ranges", "zckloglevel",
                    "debug-chunks", IMAGE_SHA256)
_FULL_DROPS = frozenset({"filename", "type", "sha256", "compressed", "encrypted", "installed-directly", "ivt"}
                        | {f"properties.{p}" for p in DELTA_PROPERTIES})
_URL = re.compile(r"https?://[^/?#]+/(?:[^?#]*/)?([^/?#]+)(?:[?#].*)?")


@dataclass(frozen=True)
class Profile:
    """How chunks are cut: libzck's content-defined chunks, or fixed ones of `chunk_bytes`."""

    name: str
    chunk_bytes: Optional[int] = None

    def __str__(self) -> str:
        return self.name if self.chunk_bytes is None else f"{FINE}:{self.chunk_bytes >> 10}"


def parse_profile(text: str) -> Profile:
    """`compatible`, `fine` or `fine:KIB` (KIB a multiple of 4 up to MAX_FINE_KIB)."""
    name, _, kib = text.partition(":")
    if name == COMPATIBLE and not kib:
        return Profile(COMPATIBLE)
    if name == FINE and (not kib or kib.isdigit()):
        size = int(kib) if kib else FINE_KIB
        if size % 4 == 0 and 4 <= size <= MAX_FINE_KIB:
            return Profile(FINE, size << 10)
        raise ValueError(f"fine:{kib}: the chunk size must be a multiple of 4 KiB (the filesystem block) "
                         f"from 4 to {MAX_FINE_KIB}")
    raise ValueError(f"{text!r}: expected {COMPATIBLE}, {FINE} or {FINE}:KIB")


@dataclass(frozen=True)
class DeltaOptions:
    profile: Profile = Profile(COMPATIBLE)
    layout: str = SELF_CONTAINED

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {self.layout!r}")


@dataclass(frozen=True)
class DeltaEntry:
    """A delta entry, checked: the name of its chunk file and the handler its image goes to."""

    entry: Entry
    zckfile: str  # the body member (self-contained), the artifact (artifact), the file (url)
    chain: str
    set_url: bool  # write url = "dynamic" (self-contained, artifact)
    set_zckfile: bool  # write the zckfile property (the template has none)


@dataclass(frozen=True)
class ZckImage:
    """An image written as .zck in the staging directory: its header and body as members."""

    path: str
    header: StoredArtifact
    body: StoredArtifact
    image_sha256: str
    chunks: int


@dataclass(frozen=True)
class DeltaPlan:
    """Every delta entry of a template, checked before anything is written."""

    options: DeltaOptions
    entries: Tuple[DeltaEntry, ...]

    def first(self, member: str) -> Optional[DeltaEntry]:
        return next((d for d in self.entries if d.entry.filename == member), None)


def plan(template: Template, entries: Sequence[Entry], options: DeltaOptions, members: Sequence[str],
         bundle: str) -> DeltaPlan:
    """Check each delta entry for `options.layout`; `members` are the bundle's other members,
    `bundle` the file it is written to."""
    checked = [_check(e, options.layout) for e in entries if e.delta]
    by_member: Dict[str, DeltaEntry] = {}
    for d in checked:
        known = by_member.setdefault(d.entry.filename, d)
        if known.zckfile != d.zckfile:
            raise d.entry.fail(f"the same image is {known.zckfile!r} at {known.entry.where}, here {d.zckfile!r}: "
                               "one image has one chunk file")
        if options.layout == SELF_CONTAINED and d.zckfile in members:
            raise d.entry.fail(f"zckfile {d.zckfile!r} is the name of another member of the bundle")
        if options.layout != SELF_CONTAINED and d.zckfile == os.path.basename(bundle):
            raise d.entry.fail(f"the chunk file {d.zckfile!r} would replace the bundle itself (-o)")
    files = {d.zckfile: d for d in by_member.values()}
    if len(files) < len(by_member):
        clash = next(d for d in by_member.values() if files[d.zckfile] is not d)
        raise clash.entry.fail(f"zckfile {clash.zckfile!r} is the chunk file of another image too")
    result = DeltaPlan(options, tuple(checked))
    if options.layout == SELF_CONTAINED:
        for c in _full_modes(result, {}):
            if c.name in _group(template, c.mode[:-1]):
                raise c.replacements[0].entry.fail(f"cannot add the full-install mode {c.name!r}: "
                                                   f"{'.'.join(map(str, c.mode[:-1]))} has one already")
    return result


def _group(template: Template, path: Sequence[object]) -> Mapping[str, object]:
    node: object = template.tree
    for key in path:
        node = node[key]  # type: ignore[index]
    assert isinstance(node, dict)
    return node


def _check(entry: Entry, layout: str) -> DeltaEntry:
    if entry.compression:
        raise entry.fail("compressed: a delta image is compressed chunk by chunk by zchunk; remove it")
    if entry.encrypted:
        raise entry.fail("encrypted: zchunk chunk data is never encrypted (SWUpdate's delta handler cannot "
                         "decrypt it); remove it")
    if entry.values.get("installed-directly") is True:
        raise entry.fail("installed-directly: a delta header cannot be streamed (SWUpdate refuses it too); remove it")
    if len(entry.path) < 2 or entry.path[-2] != "images":
        raise entry.fail("type 'delta' is an image type: put it under `images`")
    props = entry.values.get("properties", {})
    for key, why in (("chain", "the handler that writes the image: raw or rawfile"),
                     ("source", "the slot the device compares with: the booted one")):
        if not isinstance(props.get(key), str) or not props[key]:
            raise entry.fail(f"properties.{key}: required by the delta handler ({why})")
    if props["chain"] == "delta":
        raise entry.fail("properties.chain: a delta image cannot chain to 'delta'")
    for key in ("url", "zckfile"):
        if props.get(key) is not None and not isinstance(props[key], str):
            raise entry.fail(f"properties.{key}: expected a string, got {props[key]!r}")
    name = _chunk_file(entry, layout, props.get("url"), props.get("zckfile"))
    return DeltaEntry(entry, name, props["chain"], layout != URL, layout != URL and props.get("zckfile") is None)


def _chunk_file(entry: Entry, layout: str, url: Optional[str], zckfile: Optional[str]) -> str:
    """The name of the image's chunk file: the body member, the .zck artifact, the file for `url`."""
    from otad.swu.cpio import name_problem

    if layout == URL:
        match = _URL.fullmatch(url or "")
        if not match:
            raise entry.fail(f"properties.url: --delta-layout url needs the http(s) URL the .zck will be served "
                             f"at, got {url!r}")
        name = match.group(1)
    elif url not in (None, "dynamic"):
        where = "the bundle itself" if layout == SELF_CONTAINED else "the second artifact"
        raise entry.fail(f"properties.url: {url!r}: the chunks come from {where} (url = \"dynamic\"); for a "
                         "static URL build with --delta-layout url")
    else:
        name = zckfile or entry.filename + (BODY_SUFFIX if layout == SELF_CONTAINED else ZCK_SUFFIX)
        if layout == ARTIFACT and not name.endswith(ZCK_SUFFIX):
            raise entry.fail(f"properties.zckfile: {name!r}: a hawkBit chunk artifact must end in .zck "
                             "(SWUpdate and otad tell the bundle from the chunks by that)")
    problem = name_problem(name)
    if problem:
        raise entry.fail(f"chunk file {name!r}: {problem}")
    return name


def write(source: str, d: DeltaEntry, staging: str, profile: Profile) -> ZckImage:
    """The .zck of `source` in `staging`, its header and body measured as members."""
    fd, path = tempfile.mkstemp(prefix="delta-", suffix=ZCK_SUFFIX, dir=staging)
    os.close(fd)
    header = _zchunk(source, path, staging, profile, d.entry)
    size = os.path.getsize(path)
    if size != header.file_length:
        raise OtadError(f"{size} bytes written, the header describes {header.file_length}", path)
    with open_source(source) as again:
        image = Digest().feed(chunks(again, source)).sha256.hexdigest()
    desc = f"zchunk {{}} of {os.path.basename(source)}, {profile}, {len(header.index)} chunks"
    return ZckImage(path, _part(path, d.entry.filename, source, 0, header.length, desc.format("header")),
                    _part(path, d.zckfile, source, header.length, size - header.length, desc.format("body")),
                    image, len(header.index))


def _zchunk(source: str, path: str, staging: str, profile: Profile, entry: Entry) -> "zck.ZckHeader":
    """Write the .zck of `source` to `path` (libzck, else the Python writer); its header, checked."""
    from otad.delta import libzck, zck, zckwriter

    try:
        with open_source(source) as opened:
            src = cast(BinaryIO, opened)
            length = os.fstat(src.fileno()).st_size
            if length == 0:
                raise entry.fail(f"{source} is empty: nothing to chunk")
            if libzck.available():
                with open(path, "wb") as out:
                    libzck.write_zck(src, length, out, profile.chunk_bytes, name=source, tmpdir=staging)
            else:
                chunker = zckwriter.chunker_for(profile.name, profile.chunk_bytes or 0)
                zckwriter.write_zck(src, length, path, chunker, name=source)
        with open(path, "rb") as f:
            lead = zck.parse_lead(f.read(64), path)
            f.seek(0)
            header = zck.parse_header(f.read(lead.total_length), name=path)
        zck.check_delta_usable(header, path)
        return header
    except DeltaError as exc:
        raise ConfigError(exc.what, source) from exc
    except OSError as exc:
        raise OtadError(f"cannot write: {exc.strerror}", path) from exc


def _part(path: str, member: str, source: str, offset: int, size: int, how: str) -> StoredArtifact:
    digest = Digest()
    with open_source(path) as f:
        f.seek(offset)
        left = size
        while left:
            data = f.read(min(left, 1 << 20))
            if not data:
                raise OtadError(f"ends {left} bytes early", path)
            digest.update(data)
            left -= len(data)
    return StoredArtifact(member, source, path, size, digest.sha256.hexdigest(), digest.sum & 0xFFFFFFFF,
                          None, None, size, size, offset=offset, how=how)


def entry_updates(d: DeltaEntry, z: ZckImage) -> Tuple[Set, ...]:
    """The properties a delta entry gets besides its sha256."""
    props = [Set("url", "dynamic")] if d.set_url else []
    props += [Set("zckfile", d.zckfile)] if d.set_zckfile else []
    return (Set("properties", children=tuple(props + [Set(IMAGE_SHA256, z.image_sha256)])),)


def full_modes(result: DeltaPlan, zcks: Mapping[str, ZckImage]) -> List[ModeCopy]:
    """Self-contained: beside each mode holding delta entries, `MODE-full` installing the bodies."""
    return _full_modes(result, zcks) if result.options.layout == SELF_CONTAINED else []


def _full_modes(result: DeltaPlan, zcks: Mapping[str, ZckImage]) -> List[ModeCopy]:
    modes: Dict[Tuple[Union[str, int], ...], List[Replacement]] = {}
    for d in result.entries:
        path = d.entry.path
        if len(path) < 5 or not isinstance(path[-3], str):
            raise d.entry.fail("a self-contained bundle adds a full-install mode beside the delta image's mode: "
                               "put the image into a selection (software.SET.MODE.images), or build with "
                               "--delta-layout artifact or url")
        body = zcks[d.entry.filename].body.sha256 if zcks else ""
        sets = (Set("filename", d.zckfile), Set("type", d.chain), Set("compressed", "zstd"),
                Set("installed-directly", True), Set("sha256", body))
        modes.setdefault(path[:-2], []).append(Replacement(d.entry, _FULL_DROPS, sets))
    return [ModeCopy(mode, f"{mode[-1]}{FULL_SUFFIX}", tuple(r)) for mode, r in modes.items()]


def members(result: DeltaPlan, zcks: Mapping[str, ZckImage]) -> List[StoredArtifact]:
    """The trailing members: every body (self-contained), in the template's order."""
    if result.options.layout != SELF_CONTAINED:
        return []
    return [zcks[m].body for m in dict.fromkeys(d.entry.filename for d in result.entries)]


def publish(result: DeltaPlan, zcks: Mapping[str, ZckImage], bundle: str) -> List[str]:
    """Artifact and url layouts: move each .zck beside the bundle, named as its zckfile."""
    from otad.durable import fsync_dir

    if result.options.layout == SELF_CONTAINED:
        return []
    directory = os.path.dirname(bundle)
    written = []
    for member, z in zcks.items():
        d = result.first(member)
        assert d is not None
        dest = os.path.join(directory, d.zckfile)
        with open(z.path, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.replace(z.path, dest)
        except OSError as exc:
            raise OtadError(f"cannot write: {exc.strerror}", dest) from exc
        written.append(dest)
    if written:
        fsync_dir(directory)
    return written
