"""mkswu: build a signed .swu bundle from a sw-description template and artifact files.

Owns the build side of the format: finding each entry's artifact, compress → encrypt → hash,
naming members as swugenerator does, editing the template *text* in place (comments and layout
kept), signing those exact bytes and writing the CPIO archive. Reading bundles is `otad.swu`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import logging
import os
import re
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, \
    Tuple, Union

from otad.errors import ConfigError, OtadError

# cli.py builds every sub-command's parser on each run, so importing this module must stay cheap
# (`otad --help` on a Pi Zero): cryptography, zstandard, libconf and otad.swu load on first use.
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from otad.swu.cpio import CpioWriter

log = logging.getLogger(__name__)

DESCRIPTION = "sw-description"
SIG_NAME = "sw-description.sig"
FORMATS = ("crc", "newc")
COMPRESSIONS = ("zlib", "zstd")
SIGN_FORMS = "CMS,KEY,CERT[,PASSFILE][,CHAIN] or RSA,KEY[,PASSFILE]"
ZLIB_LEVEL = 9  # swugenerator runs `gzip -9 -n`
ZSTD_LEVEL = 3  # swugenerator runs the zstd CLI, whose default level is 3
ZSTD_FRAME_MIB = 4  # frames this large cost ~0.1 % of size at level 3 (window 2 MiB) and make resume points
_CHUNK = 1 << 20
_MAX_MEMBER = 0xFFFFFFFF  # c_filesize is 32 bits
_MAX_NAME = 254  # SWUpdate refuses c_namesize >= 256, and the NUL counts

Signer = Union["CmsSigner", "RsaSigner"]
_Path = Tuple[Union[str, int], ...]


# --- inputs: signing keys, swugenerator variables, artifacts (the AES key: otad.swu.crypto) ---

def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", path) from exc


@dataclass(frozen=True)
class CmsSigner:
    """Detached CMS SignedData, as `openssl cms -sign -binary -nosmimecap -outform DER` makes it."""

    cert: x509.Certificate
    key: Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]
    chain: Tuple[x509.Certificate, ...] = ()

    def sign(self, content: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.serialization import pkcs7

        builder = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(self.cert, self.key, hashes.SHA256())
        for cert in self.chain:
            builder = builder.add_certificate(cert)
        options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary,
                   pkcs7.PKCS7Options.NoCapabilities]
        return builder.sign(serialization.Encoding.DER, options)

    def describe(self) -> str:
        chain = f" + {len(self.chain)} chain certificate(s)" if self.chain else ""
        return f"CMS, signer {self.cert.subject.rfc4514_string()}{chain}"


@dataclass(frozen=True)
class RsaSigner:
    """A bare PKCS#1 v1.5 signature over SHA-256, as `openssl dgst -sha256 -sign` makes it."""

    key: rsa.RSAPrivateKey

    def sign(self, content: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        return self.key.sign(content, padding.PKCS1v15(), hashes.SHA256())

    def describe(self) -> str:
        return f"raw RSA-{self.key.key_size}"


def load_signer(spec: str) -> Signer:
    """`-k` as swugenerator takes it (CMS,KEY,CERT[,PASSFILE[,CHAIN]]); a 4th field holding
    certificates is the chain instead, so that CMS,KEY,CERT,CHAIN works too."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    fields = spec.split(",")
    if fields[0] == "CMS" and 3 <= len(fields) <= 5 and all(fields[1:3]):
        passfile, chain = (fields[3:] + ["", ""])[:2]
        if passfile and not chain and b"-----BEGIN CERTIFICATE-----" in _read(passfile, "CMS chain/password file"):
            passfile, chain = "", passfile
        return _cms_signer(fields[1], fields[2], passfile, chain)
    if fields[0] == "RSA" and 2 <= len(fields) <= 3 and all(fields[1:]):
        key = _load_key(fields[1], fields[2] if len(fields) == 3 else "")
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"raw signatures need an RSA key, got {type(key).__name__}", fields[1])
        return RsaSigner(key)
    if fields[0] in ("PKCS11", "CUSTOM"):
        raise ConfigError(f"-k {fields[0]},...: not supported by mkswu; expected {SIGN_FORMS}")
    raise ConfigError(f"-k {spec!r}: expected {SIGN_FORMS}")


def _cms_signer(key_path: str, cert_path: str, passfile: str, chain_path: str) -> CmsSigner:
    from datetime import datetime, timezone

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    cert = _load_certs(cert_path)[0]
    key = _load_key(key_path, passfile)
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ConfigError(f"CMS signing needs an RSA or EC key, got {type(key).__name__}", key_path)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, spki)
            != cert.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise ConfigError(f"this key does not belong to the certificate '{cert.subject.rfc4514_string()}' "
                          f"in {cert_path}", key_path)
    not_after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=timezone.utc)
    if not_after < datetime.now(timezone.utc):
        log.warning("signer certificate '%s' expired on %s: devices will refuse this bundle",
                    cert.subject.rfc4514_string(), not_after.date())
    return CmsSigner(cert, key, tuple(_load_certs(chain_path)) if chain_path else ())


def _load_certs(path: str) -> List[x509.Certificate]:
    from cryptography import x509

    data = _read(path, "certificate file")
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks] or [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}", path) from exc


def _load_key(path: str, passfile: str) -> object:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(path, "private key")
    # Like `openssl -passin file:`: the first line is the password.
    password = _read(passfile, "password file").split(b"\n", 1)[0].rstrip(b"\r") if passfile else None
    try:
        try:
            return serialization.load_pem_private_key(data, password)
        except TypeError:
            if password is None:
                raise ConfigError("the private key is encrypted: give a password file", path) from None
            return serialization.load_pem_private_key(data, None)  # openssl ignores a needless password
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("not a PEM private key, or the password is wrong", path) from exc


def load_variables(path: str) -> Dict[str, str]:
    """swugenerator's `-c` file: `variables = { NAME = "value"; };` for @@NAME@@ in the template."""
    from otad import libconfig

    group = libconfig.loads(_read(path, "configuration file"), source=path).get("variables", {})
    if not isinstance(group, dict):
        raise ConfigError('variables: expected a group { NAME = "value"; }', path)
    for name, value in group.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"variables.{name}: expected a string, got {value!r}", path)
    return {name: str(value) for name, value in group.items()}


def find_artifact(name: str, dirs: Sequence[str], where: str) -> str:
    """The first `dir/name` that exists, in the order the directories were given."""
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
        if os.path.exists(path):
            raise ConfigError(f"artifact {path}: not a regular file", where)
    raise ConfigError(f"artifact {name!r} not found in {', '.join(dirs)}", where)


# --- the template: substitutions, the tree, and where each setting is written ---------------

_VARIABLE = re.compile(r"@@(\w+)@@")
_FUNCTION = re.compile(r"\$(swupdate_get_sha256|swupdate_get_size)\(([^()\n]*)\)")
# Enough of libconfig's scanner to find spans in a text that `libconfig.loads` accepted.
_SCAN = re.compile(r"""(?P<space>[ \t\r\n\f]+)
    | (?P<comment>/\*.*?\*/|(?:\#|//)[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<punct>[{}()\[\]=:;,])
    | (?P<atom>[-+.*\w]+)""", re.VERBOSE | re.DOTALL)
_LINE_COMMENT = re.compile(r"[ \t]*(?:(?:#|//).*)?")
_CLOSE = {"{": "}", "(": ")", "[": "]"}


@dataclass
class _Node:
    """A group, list or array as written: offsets of its brackets, its settings or items."""

    kind: str
    start: int
    end: int = -1
    settings: Dict[str, "_Setting"] = field(default_factory=dict)
    items: List["_Value"] = field(default_factory=list)


@dataclass
class _Value:
    start: int
    end: int
    node: Optional[_Node] = None


@dataclass
class _Setting:
    name: str
    start: int
    value: _Value
    end: int  # after the `;` or `,` if there is one
    terminated: bool


class _Scanner:
    """Recursive descent over tokens; the grammar was already checked by `libconfig.loads`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: List[Tuple[str, int, int]] = []
        pos = 0
        while pos < len(text):
            m = _SCAN.match(text, pos)
            assert m is not None, f"libconfig accepted a text mkswu cannot scan at offset {pos}"
            kind = str(m.lastgroup)
            if kind not in ("space", "comment"):
                self.tokens.append((m.group() if kind == "punct" else kind, m.start(), m.end()))
            pos = m.end()
        self.i = 0

    def peek(self) -> str:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else ""

    def take(self) -> Tuple[str, int, int]:
        self.i += 1
        return self.tokens[self.i - 1]

    def root(self, size: int) -> _Node:
        node = _Node("{", -1, size)
        self.settings(node)
        assert self.i == len(self.tokens), "tokens left after the last setting"
        return node

    def settings(self, node: _Node) -> None:
        while self.peek() == "atom":
            _, start, end = self.take()
            name = self.text[start:end]
            self.take()  # '=' or ':'
            value = self.value()
            terminated = self.peek() in (";", ",")
            after = self.take()[2] if terminated else value.end
            node.settings[name] = _Setting(name, start, value, after, terminated)

    def value(self) -> _Value:
        kind, start, end = self.take()
        if kind in _CLOSE:
            node = _Node(kind, start)
            if kind == "{":
                self.settings(node)
            while self.peek() != _CLOSE[kind]:
                node.items.append(self.value())
                if self.peek() == ",":
                    self.take()
            node.end = self.take()[1]
            return _Value(start, node.end + 1, node)
        while kind == "string" and self.peek() == "string":  # adjacent literals are one value
            end = self.take()[2]
        return _Value(start, end)


@dataclass(frozen=True)
class Template:
    """The template after @@VAR@@/$function substitution, its tree and its written layout."""

    source: str
    text: str
    tree: Mapping[str, Any] = field(hash=False)
    root: _Node = field(hash=False, compare=False)


def read_template(path: str, variables: Mapping[str, str], dirs: Sequence[str]) -> Template:
    from otad import libconfig

    raw = _read(path, "template")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"not valid UTF-8: byte {raw[exc.start]:#04x}", f"{path}:{line}") from None
    text = "\n".join(_substitute(line, f"{path}:{n}", variables, dirs)
                     for n, line in enumerate(text.split("\n"), 1))
    tree = libconfig.loads(text, source=path, error=ConfigError)
    if not isinstance(tree.get("software"), dict):
        raise ConfigError("no root group 'software': expected `software = { ... };`", path)
    return Template(path, text, tree, _Scanner(text).root(len(text)))


def _substitute(line: str, where: str, variables: Mapping[str, str], dirs: Sequence[str]) -> str:
    """swugenerator's @@NAME@@ variables, then its $swupdate_get_sha256/size(artifact) functions."""
    def variable(m: "re.Match[str]") -> str:
        if m.group(1) not in variables:
            hint = "" if variables else " (no -c file with a `variables` group was given)"
            raise ConfigError(f"@@{m.group(1)}@@ is not defined{hint}", where)
        return variables[m.group(1)]

    def function(m: "re.Match[str]") -> str:
        path = find_artifact(m.group(2).strip(), dirs, where)
        if m.group(1) == "swupdate_get_size":
            return str(os.path.getsize(path))
        with _open_source(path) as src:
            return _Digest().feed(_chunks(src, path)).sha256.hexdigest()

    return _FUNCTION.sub(function, _VARIABLE.sub(variable, line))


def _lookup(tree: Any, path: _Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _label(path: _Path) -> str:
    return "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")


# --- entries and the members they need ---------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """A group under `software` that has a `filename` (images, files, scripts, any section)."""

    label: str  # software.stable.copy2.images[0]
    where: str  # template:line of its filename
    path: _Path
    node: _Node = field(compare=False, repr=False)
    filename: str
    compression: Optional[str]  # what `compressed` asks for
    encrypted: bool
    ubivol: bool

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.label} {self.filename!r}: {what}", self.where)


def _groups_with_filename(node: _Node, path: _Path) -> Iterator[Tuple[_Path, _Node]]:
    """Like swugenerator: every group at any depth that holds a `filename`, in file order."""
    if node.kind == "{" and "filename" in node.settings:
        yield path, node
    children: List[Tuple[Union[str, int], _Value]] = [(k, s.value) for k, s in node.settings.items()]
    children += list(enumerate(node.items))
    for key, value in children:
        if value.node is not None:
            yield from _groups_with_filename(value.node, path + (key,))


def _entries(template: Template) -> List[_Entry]:
    software = template.root.settings["software"].value.node
    assert software is not None
    return [_entry(template, path, node) for path, node in _groups_with_filename(software, ("software",))]


def _entry(template: Template, path: _Path, node: _Node) -> _Entry:
    from otad.swu.cpio import name_problem

    values = _lookup(template.tree, path)
    line = template.text.count("\n", 0, node.settings["filename"].start) + 1
    where, label, filename = f"{template.source}:{line}", _label(path), values["filename"]

    def fail(what: str) -> ConfigError:
        return ConfigError(f"{label} {filename!r}: {what}", where)

    if not isinstance(filename, str):
        raise ConfigError(f"{label}.filename: expected a string, got {filename!r}", where)
    problem = name_problem(filename) or ("reserved for the bundle's own members"
                                         if filename in (DESCRIPTION, SIG_NAME) else "")
    if problem:
        raise fail(f"filename: {problem}")
    compressed, encrypted = values.get("compressed"), values.get("encrypted", False)
    if compressed is not None and compressed not in COMPRESSIONS and not isinstance(compressed, bool):
        raise fail(f"compressed: unknown compression {compressed!r}: expected 'zlib' or 'zstd'")
    if not isinstance(encrypted, bool):
        raise fail(f"encrypted: expected true or false, got {encrypted!r}")
    if values.get("type") == "delta":
        raise fail("type 'delta' needs zchunk processing, which mkswu does not do")
    if not isinstance(values.get("properties", {}), dict):
        raise fail('properties: expected a group { key = "value"; }')
    compression = "zlib" if compressed is True else compressed or None  # true: SWUpdate's legacy zlib
    return _Entry(label, where, path, node, filename, compression, encrypted, values.get("type") == "ubivol")


@dataclass(frozen=True)
class _Job:
    """One member to store: what it is made from and how."""

    member: str
    source: str
    compression: Optional[str]  # applied by mkswu (None with --no-compress)
    encrypted: bool

    def how(self) -> str:
        return ", ".join([self.compression or "not compressed"] + (["encrypted"] if self.encrypted else []))


def _plan(entries: Sequence[_Entry], options: "BuildOptions") -> List[_Job]:
    """The job for each entry; entries that need the same member share one job."""
    jobs: Dict[str, _Job] = {}
    planned = []
    for entry in entries:
        if entry.encrypted and options.aes_key is None:
            raise entry.fail("encrypted = true, but no AES key was given (-K FILE)")
        compression = entry.compression if options.compress else None
        # swugenerator's names: x → x.zlib / x.zstd when it compresses, then + .enc when it encrypts.
        member = entry.filename + (f".{compression}" if compression else "") + (".enc" if entry.encrypted else "")
        if len(member.encode("utf-8")) > _MAX_NAME:
            raise entry.fail(f"member name {member!r} is longer than {_MAX_NAME} bytes")
        job = _Job(member, find_artifact(entry.filename, options.artifact_dirs, entry.where), compression,
                   entry.encrypted)
        known = jobs.setdefault(member, job)
        if known != job:
            raise entry.fail(f"member {member!r} would be both {known.source} ({known.how()}) and "
                             f"{job.source} ({job.how()})")
        planned.append(known)
    return planned


# --- compress → encrypt → hash, in bounded chunks ----------------------------------------------

@dataclass(frozen=True)
class StoredArtifact:
    """One member as stored in the bundle."""

    member: str
    source: str  # the artifact file
    path: str  # what is copied into the bundle: a staged file, or `source` itself
    size: int
    sha256: str
    checksum: int  # the crc format's byte sum
    compression: Optional[str]
    ivt: Optional[str]
    plain_size: int  # bytes before encryption: properties.decrypted-size
    source_size: int  # bytes of the artifact: properties.decompressed-size


class _Digest:
    """Size, sha256 and crc sum of the bytes as stored; writes them through to `out` if given."""

    def __init__(self, out: Optional[IO[bytes]] = None) -> None:
        from otad.swu.cpio import byte_sum

        self._byte_sum: Callable[[bytes], int] = byte_sum
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.sum = 0

    def update(self, data: bytes) -> None:
        if self.out is not None:
            self.out.write(data)
        self.sha256.update(data)
        self.size += len(data)
        self.sum += self._byte_sum(data)

    def feed(self, chunks: Iterator[bytes]) -> "_Digest":
        for chunk in chunks:
            self.update(chunk)
        return self


@contextlib.contextmanager
def _open_source(path: str) -> Iterator[IO[bytes]]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from exc
    with f:
        yield f


def _chunks(src: IO[bytes], path: str) -> Iterator[bytes]:
    while True:
        try:
            data = src.read(_CHUNK)
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", path) from exc
        if not data:
            return
        yield data


class _Stage(Protocol):
    def update(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Gzip:
    """SWUpdate's "zlib" is a gzip stream; zlib writes its header with mtime 0 and no name."""

    def __init__(self) -> None:
        self._obj = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def update(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Zstd:
    """zstd frames with their content size and a checksum, as the zstd CLI writes one. With
    `frame_bytes`, a new frame starts every that many input bytes: otad can resume an
    interrupted download at a frame's end (SWUpdate and `zstd -d` read the frames as one)."""

    def __init__(self, size: int, frame_bytes: int = 0) -> None:
        import zstandard

        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        self._frame_bytes = frame_bytes or max(size, 1)
        self._left = size  # input bytes still to come, as pledged
        self._open()

    def _open(self) -> None:
        self._in_frame = min(self._frame_bytes, self._left)
        self._left -= self._in_frame
        self._obj = self._compressor.compressobj(size=self._in_frame)

    def update(self, data: bytes) -> bytes:
        out = []
        while len(data) > self._in_frame and self._left > 0:
            out.append(self._obj.compress(data[:self._in_frame]) + self._obj.flush())
            data = data[self._in_frame:]
            self._open()
        self._in_frame -= len(data)
        out.append(self._obj.compress(data))
        return b"".join(out)

    def finish(self) -> bytes:
        return self._obj.flush()


class _Encrypt:
    """AES-CBC with PKCS#7 padding, as `openssl enc -aes-256-cbc -K … -iv … -nosalt`."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        from cryptography.hazmat.primitives import padding as sym_padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._padder = sym_padding.PKCS7(128).padder()
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        self.plain_size = 0

    def update(self, data: bytes) -> bytes:
        self.plain_size += len(data)
        return self._cipher.update(self._padder.update(data))

    def finish(self) -> bytes:
        return self._cipher.update(self._padder.finalize()) + self._cipher.finalize()


def _through(stages: Sequence[_Stage], data: bytes) -> bytes:
    for stage in stages:
        data = stage.update(data)
    return data


def _drain(stages: Sequence[_Stage]) -> bytes:
    data = b""
    for stage in stages:
        data = stage.update(data) + stage.finish()
    return data


def _store(job: _Job, key: Optional[bytes], staging: str, zstd_frame_bytes: int = 0) -> StoredArtifact:
    """Process one artifact into the staging directory (or hash it where it is, if stored as is)."""
    iv = os.urandom(16) if job.encrypted else None
    with _open_source(job.source) as src:
        source_size = os.fstat(src.fileno()).st_size
        stages: List[_Stage] = []
        if job.compression:
            stages.append(_Gzip() if job.compression == "zlib" else _Zstd(source_size, zstd_frame_bytes))
        encrypt = _Encrypt(key, iv) if key is not None and iv is not None else None
        stages += [encrypt] if encrypt else []
        path = os.path.join(staging, job.member) if stages else job.source
        digest = _pipe(src, job.source, stages, path) if stages else _Digest().feed(_chunks(src, job.source))
    if digest.size > _MAX_MEMBER:
        raise ConfigError(f"{job.member} would be {digest.size} bytes; a cpio member holds at most {_MAX_MEMBER}",
                          job.source)
    log.info("%s: %d bytes from %s (%s)", job.member, digest.size, job.source, job.how())
    return StoredArtifact(job.member, job.source, path, digest.size, digest.sha256.hexdigest(),
                          digest.sum & 0xFFFFFFFF, job.compression, iv.hex() if iv else None,
                          encrypt.plain_size if encrypt else digest.size, source_size)


def _pipe(src: IO[bytes], source: str, stages: Sequence[_Stage], staged: str) -> _Digest:
    import zstandard

    try:
        with open(staged, "xb") as out:
            digest = _Digest(out)
            for chunk in _chunks(src, source):
                digest.update(_through(stages, chunk))
            digest.update(_drain(stages))
            return digest
    except OSError as exc:
        raise OtadError(f"cannot write: {exc.strerror}", staged) from exc
    except zstandard.ZstdError as exc:  # the pledged size no longer matches
        raise ConfigError(f"changed while being compressed: {exc}", source) from exc


# --- editing the template text ---------------------------------------------------------------

@dataclass(frozen=True)
class _Set:
    """Set `name` to the string `value`, or merge `children` into the group `name`."""

    name: str
    value: str = ""
    children: Tuple["_Set", ...] = ()


def _updates(entry: _Entry, stored: StoredArtifact) -> Tuple[_Set, ...]:
    """What swugenerator writes into an entry: filename, sha256, ivt and size properties."""
    sets = [_Set("filename", stored.member)] if stored.member != entry.filename else []
    sets.append(_Set("sha256", stored.sha256))
    properties = []
    if entry.ubivol and stored.compression:  # ubivol sizes the volume before it decompresses
        properties.append(_Set("decompressed-size", str(stored.source_size)))
    if stored.ivt:
        sets.append(_Set("ivt", stored.ivt))
        properties.append(_Set("decrypted-size", str(stored.plain_size)))
    if properties:
        sets.append(_Set("properties", children=tuple(properties)))
    return tuple(sets)


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r", "\f": "\\f"}


def _quote(value: str) -> str:
    return '"' + "".join(_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x20 or c == "\x7f" else c)
                         for c in value) + '"'


def _render(s: _Set) -> str:
    if s.children:
        return f"{s.name} = {{ {' '.join(map(_render, s.children))} }};"
    return f"{s.name} = {_quote(s.value)};"


Edit = Tuple[int, int, str]


def _group_edits(text: str, node: _Node, sets: Sequence[_Set]) -> List[Edit]:
    edits: List[Edit] = []
    new: List[str] = []
    for s in sets:
        setting = node.settings.get(s.name)
        if setting is None:
            new.append(_render(s))
        elif not s.children:
            edits.append((setting.value.start, setting.value.end, _quote(s.value)))
        else:
            assert setting.value.node is not None and setting.value.node.kind == "{", "checked by _entry"
            edits += _group_edits(text, setting.value.node, s.children)
    return edits + (_insertion(text, node, new) if new else [])


def _insertion(text: str, node: _Node, new: Sequence[str]) -> List[Edit]:
    """New settings after the group's last one, on new lines when the group is written that way."""
    if not node.settings:
        return [(node.start + 1, node.start + 1, " " + " ".join(new) + " ")]
    last = max(node.settings.values(), key=lambda s: s.start)
    semicolon = "" if last.terminated else ";"
    indent = text[text.rfind("\n", 0, last.start) + 1:last.start]
    if indent.strip(" \t"):  # the group is written on one line: continue it
        return [(last.end, last.end, semicolon + "".join(" " + s for s in new))]
    lines = "".join(("\r\n" if "\r\n" in text else "\n") + indent + s for s in new)
    line_end = text.find("\n", last.end)
    rest = text[last.end:len(text) if line_end < 0 else line_end].rstrip("\r")
    if rest and _LINE_COMMENT.fullmatch(rest):  # a comment after the last setting stays on its line
        return [(last.end, last.end, semicolon), (last.end + len(rest), last.end + len(rest), lines)]
    return [(last.end, last.end, semicolon + lines)]


def _apply(text: str, edits: List[Edit]) -> str:
    pieces, pos = [], 0
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1])):
        assert start >= pos, f"overlapping template edits at offset {start}"
        pieces += [text[pos:start], new]
        pos = end
    return "".join(pieces + [text[pos:]])


def _set_values(group: Dict[str, Any], sets: Sequence[_Set]) -> None:
    for s in sets:
        if s.children:
            _set_values(group.setdefault(s.name, {}), s.children)
        else:
            group[s.name] = s.value


def _edit_template(template: Template, entries: Sequence[_Entry], updates: Sequence[Tuple[_Set, ...]]) -> str:
    """The template text with every entry updated; re-read to prove nothing else changed."""
    from otad import libconfig

    edits = [e for entry, sets in zip(entries, updates) for e in _group_edits(template.text, entry.node, sets)]
    text = _apply(template.text, edits)
    expected = copy.deepcopy(dict(template.tree))
    for entry, sets in zip(entries, updates):
        _set_values(_lookup(expected, entry.path), sets)
    assert libconfig.loads(text, source=template.source) == expected, "template edit went wrong"
    return text


# --- the build ---------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class BuildResult:
    output: str
    size: int
    sw_description: bytes
    signature: Optional[bytes]
    signed_by: Optional[str]
    artifacts: Tuple[StoredArtifact, ...]


def build(options: BuildOptions) -> BuildResult:
    """Build the bundle; the output file appears only once it is complete."""
    template = read_template(options.template, options.variables, options.artifact_dirs)
    entries = _entries(template)
    jobs = _plan(entries, options)
    output = os.path.abspath(options.output)
    with _staging(output) as staging:
        stored: Dict[str, StoredArtifact] = {}
        for job in jobs:
            if job.member not in stored:
                stored[job.member] = _store(job, options.aes_key, staging, options.zstd_frame_mib << 20)
        text = _edit_template(template, entries, [_updates(e, stored[j.member]) for e, j in zip(entries, jobs)])
        content = text.encode("utf-8")
        signature = options.signer.sign(content) if options.signer else None
        size = _write_bundle(output, options.fmt, content, signature, list(stored.values()))
    return BuildResult(output, size, content, signature, options.signer.describe() if options.signer else None,
                       tuple(stored.values()))


@contextlib.contextmanager
def _staging(output: str) -> Iterator[str]:
    """Processed artifacts wait next to the output (the same disk), not in /tmp (often RAM)."""
    directory = os.path.dirname(output)
    try:
        staging = tempfile.TemporaryDirectory(prefix=f".{os.path.basename(output)}.mkswu-", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cannot create a staging directory next to the output: {exc.strerror}",
                          directory) from exc
    with staging as path:
        yield path


def _write_bundle(output: str, fmt: str, content: bytes, signature: Optional[bytes],
                  stored: Sequence[StoredArtifact]) -> int:
    from otad.durable import fsync_dir
    from otad.swu.cpio import CRC, NEWC, CpioWriter

    directory = os.path.dirname(output)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OtadError(f"cannot create: {exc.strerror}", output) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            with CpioWriter(f, {"crc": CRC, "newc": NEWC}[fmt]) as cpio:
                cpio.add(DESCRIPTION, content)
                if signature is not None:
                    cpio.add(SIG_NAME, signature)
                for artifact in stored:
                    _add_member(cpio, artifact)
            size = cpio.bytes_written
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OtadError(f"cannot write: {exc.strerror}", output) from exc
        raise
    fsync_dir(directory)
    return size


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
    with _open_source(artifact.path) as src:
        reader = _HashingReader(src, artifact.path)
        try:
            cpio.add_stream(artifact.member, artifact.size, reader, checksum=artifact.checksum)
        except ValueError as exc:
            raise OtadError(f"changed while the bundle was built: {exc}", artifact.path) from exc
    if reader.sha256.hexdigest() != artifact.sha256:
        raise OtadError("changed while the bundle was built: its sha256 is not the one in sw-description",
                        artifact.path)


# --- command line ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """mkswu's options, named like swugenerator's where they mean the same."""
    parser.add_argument("-s", "--sw-description", required=True, metavar="TEMPLATE",
                        help="sw-description template (libconfig)")
    parser.add_argument("-a", "--artifactory", action="append", metavar="DIR[,DIR...]",
                        help="where artifacts are searched, in order (repeatable; default: .)")
    parser.add_argument("-o", "--swu-file", required=True, metavar="OUT.swu", help="the bundle to write")
    parser.add_argument("-k", "--sign", metavar="SPEC",
                        help=f"sign sw-description: {SIGN_FORMS} (PEM files; default: unsigned)")
    parser.add_argument("-K", "--encryption-key-file", metavar="FILE",
                        help="AES key for entries with encrypted = true: the device's '<hex key> <hex iv>' "
                             "file or swugenerator's key=/iv= lines (32/48/64 hex digits: AES-128/192/256); "
                             "every artifact gets its own random ivt")
    parser.add_argument("-n", "--no-compress", action="store_true",
                        help="store artifacts as found (already compressed); names stay as written")
    parser.add_argument("-c", "--config", dest="variables_file", metavar="FILE",
                        help='swugenerator configuration: variables = { NAME = "value"; } for @@NAME@@')
    parser.add_argument("--format", choices=FORMATS, default="crc",
                        help="cpio format (default: crc, as swugenerator)")
    parser.add_argument("--zstd-frame-mib", type=_frame_mib, default=ZSTD_FRAME_MIB, metavar="N",
                        help=f"start a new zstd frame every N MiB of input, where an interrupted download can "
                             f"resume (default: {ZSTD_FRAME_MIB}; 0: one frame, as the zstd CLI)")


def _frame_mib(text: str) -> int:
    if not text.isdigit() or int(text) > 4096:
        raise argparse.ArgumentTypeError(f"expected 0..4096, got {text!r}")
    return int(text)


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    from otad.swu.crypto import load_key_file

    dirs = tuple(d for value in args.artifactory or ["."] for d in value.split(",") if d)
    return BuildOptions(
        template=args.sw_description, output=args.swu_file, artifact_dirs=dirs or (".",),
        signer=load_signer(args.sign) if args.sign else None,
        aes_key=load_key_file(args.encryption_key_file).key if args.encryption_key_file else None,
        fmt=args.format, compress=not args.no_compress,
        variables=load_variables(args.variables_file) if args.variables_file else {},
        zstd_frame_mib=args.zstd_frame_mib,
    )


def run(args: argparse.Namespace) -> int:
    """Build as `args` say and print what was stored; errors are raised as OtadError."""
    from otad.console import human_bytes

    result = build(options_from_args(args))
    for a in result.artifacts:
        how = ", ".join(filter(None, [a.compression, "encrypted" if a.ivt else ""])) or "as is"
        print(f"{a.member}: {human_bytes(a.size)}, sha256 {a.sha256} ({a.source}, {how})")
    signed = f"signed ({result.signed_by})" if result.signed_by else "NOT signed"
    print(f"{result.output}: {len(result.artifacts)} artifact(s), {human_bytes(result.size)}, {signed}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`scripts/mkswu` and `python -m otad.mkswu`: one error line, a traceback only with --debug."""
    parser = argparse.ArgumentParser(prog="mkswu", description="Build a .swu bundle from a sw-description "
                                     "template and artifact files (like swugenerator create).")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each artifact as it is stored")
    parser.add_argument("--debug", action="store_true", help="print tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.debug else logging.WARNING,
                        format="mkswu: %(levelname)s: %(message)s", force=True)
    from otad.console import report_errors

    return report_errors("mkswu", args.debug, lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
