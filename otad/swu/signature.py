"""Verify the signature over sw-description: DER CMS SignedData against a trust file, or raw RSA.

Owns parsing the detached CMS (asn1crypto), the signer's signature over the exact bytes, the
path from the signer certificate to the trust file, validity at a trustworthy time, purpose and
the forced signer name. Reading the bundle is `swu.bundle`'s job; image sha256s are checked later.

The certificate path is checked here by hand, not with `cryptography.x509.verification`: a Pi
gets cryptography 38 (no verification module; custom EKU policies need >= 45.0.1), that verifier
refuses things OpenSSL and SWUpdate accept (CAs without keyUsage, v1 roots), and the path is
short with every link explicit: issuers come only from the device's trust file (CMS-carried
certificates are ignored, like SWUpdate's CMS_IGNORE_ADDITIONAL_CERTS), and each link must match
by name *and* verify the child's signature with the issuer's key. The rules copy OpenSSL's
`smime_sign` chain checks (docs/architecture.md, "Signatures"). Only APIs present in cryptography 38 are
used.

Certificates are read with asn1crypto, every field and extension of them, and cryptography only
verifies signatures: `cryptography.x509` compiles an RFC 4514 parser's regexes and loads the email
package at import, 0.9 s of `otad install`'s start on a Pi Zero, for names otad never parses.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Protocol, Sequence, Tuple

from asn1crypto import cms as asn1_cms, core as asn1_core, x509 as asn1_x509  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat._oid import ObjectIdentifier
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from otad import RELEASE_DATE
from otad.errors import ConfigError, SignatureError
from otad.smallfile import read_bytes

log = logging.getLogger(__name__)

SIG_NAME = "sw-description.sig"
PURPOSES = ("emailProtection", "codeSigning", "any")

_HASHES: Dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_EKU_NAMES = {
    "1.3.6.1.5.5.7.3.1": "serverAuth", "1.3.6.1.5.5.7.3.2": "clientAuth",
    "1.3.6.1.5.5.7.3.3": "codeSigning", "1.3.6.1.5.5.7.3.4": "emailProtection",
    "1.3.6.1.5.5.7.3.8": "timeStamping", "1.3.6.1.5.5.7.3.9": "OCSPSigning",
    "2.5.29.37.0": "anyExtendedKeyUsage"}
_EKU_OIDS = {name: oid for oid, name in _EKU_NAMES.items()}
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"  # some signers put id-ecPublicKey where ecdsa-with-SHAx belongs
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)
_MAX_DEPTH = 8   # certificates in one path; real ones have 2-3
MAX_TRUST_FILE_BYTES = 4 << 20  # Debian's whole CA bundle is about 200 KiB
_MAX_PATHS = 16  # candidate paths tried; more only with many same-name CAs in the trust file


# --- public types ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SignerInfo:
    """Who signed sw-description, as verified."""

    subject: str  # RFC 4514 string of the signer certificate subject ("" for raw RSA)
    common_name: Optional[str]
    issuer: str
    serial: int
    not_before: Optional[datetime]
    not_after: Optional[datetime]
    method: str  # "cms" or "rsa"
    checked_at: datetime  # the time validity was checked against
    clock_untrusted: bool  # the system clock was before the floor, so the floor was used


def _release_floor() -> datetime:
    day = date.fromisoformat(RELEASE_DATE)
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TrustedTime:
    """A time to check certificate validity against: a Pi has no RTC and boots at 1970.

    The true time is never before `floor` (otad's release day by default). When the system
    clock says otherwise, `now` returns the floor and logs a WARNING. A certificate must then
    not have expired by the floor; its notBefore cannot be judged (the true time may be any
    later day) and is not checked.
    """

    floor: datetime = field(default_factory=_release_floor)

    def __post_init__(self) -> None:
        if self.floor.utcoffset() is None:
            raise ValueError(f"TrustedTime.floor must be timezone-aware, got {self.floor!r}")

    def now(self, clock: Callable[[], float] = time.time) -> Tuple[datetime, bool]:
        """(time to check against, whether the floor replaced the system clock)."""
        reading = clock()
        try:
            current: Optional[datetime] = datetime.fromtimestamp(reading, timezone.utc)
        except (OverflowError, OSError, ValueError):
            current = None
        if current is not None and current >= self.floor:
            return current, False
        log.warning("system clock says %s, before the time floor %s (no RTC?): checking certificate "
                     "validity at the floor", current.isoformat() if current else repr(reading),
                     _when(self.floor))
        return self.floor, True


class Verifier(Protocol):
    def verify(self, content: bytes, signature: bytes) -> SignerInfo:
        """Return the signer if `signature` is good for exactly `content`, else raise SignatureError."""
        ...


# --- parsed inputs (everything foreign is read here, once) -----------------------------------

@dataclass(frozen=True)
class _SigAlg:
    kind: str  # "pkcs1", "pss" or "ecdsa"
    hash: str  # "" when the algorithm leaves it to the CMS digestAlgorithm
    pss_salt: int = 0
    pss_mgf_hash: str = ""


@dataclass(frozen=True)
class _Cert:
    der: bytes
    subject: str  # RFC 4514, for messages
    subject_key: str  # normalized name, for matching (as OpenSSL compares names)
    issuer: str
    issuer_key: str
    serial: int
    common_names: Tuple[str, ...]
    not_before: datetime
    not_after: datetime
    v1: bool
    ca: Optional[bool]  # basicConstraints cA; None without the extension
    pathlen: Optional[int]
    key_usage: Optional[FrozenSet[str]]
    eku: Optional[FrozenSet[str]]  # dotted OIDs
    public_key: object  # None when cryptography does not support the key type
    tbs: bytes
    signature: bytes
    sig_alg: Optional[_SigAlg]  # None: an algorithm otad does not accept
    sig_alg_name: str

    @property
    def self_issued(self) -> bool:
        return self.subject_key == self.issuer_key


@dataclass(frozen=True)
class _CmsCert:
    der: bytes
    subject_key: str
    issuer_key: str
    serial: int
    ski: Optional[bytes]


@dataclass(frozen=True)
class _Signer:
    sid: Tuple[Any, ...]  # ("ias", issuer_key, serial) or ("ski", bytes)
    sid_text: str
    digest: str
    sig_alg: Optional[_SigAlg]
    sig_alg_name: str
    signature: bytes
    signed_attrs: Optional[bytes]  # DER re-tagged as SET OF, exactly what was signed
    message_digests: Tuple[bytes, ...]
    content_types: Tuple[str, ...]


@dataclass(frozen=True)
class _Cms:
    content_type: str
    embedded: bool
    digest_algorithms: Tuple[str, ...]  # SignedData.digestAlgorithms: OpenSSL digests with these
    certs: Tuple[_CmsCert, ...]
    signers: Tuple[_Signer, ...]


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sig_alg(alg: Any) -> Tuple[Optional[_SigAlg], str]:
    """Read an asn1crypto SignedDigestAlgorithm; None for what otad does not verify."""
    name = str(alg["algorithm"].native)
    if alg["algorithm"].dotted == _EC_PUBLIC_KEY:
        return _SigAlg("ecdsa", ""), name
    try:
        kind = alg.signature_algo
    except ValueError:
        return None, name
    if kind == "rsassa_pss":
        params = alg["parameters"]
        if isinstance(params, asn1_core.Void) or params["mask_gen_algorithm"]["algorithm"].native != "mgf1":
            return None, name
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
        ok = hash_name in _HASHES and mgf_hash in _HASHES and params["trailer_field"].native == "trailer_field_bc"
        return (_SigAlg("pss", hash_name, int(params["salt_length"].native), mgf_hash) if ok else None), name
    if kind not in ("rsassa_pkcs1v15", "ecdsa"):
        return None, name
    try:
        hash_name = alg.hash_algo
    except ValueError:  # rsaEncryption / ecdsa without a hash: the CMS digestAlgorithm decides
        hash_name = ""
    if hash_name and hash_name not in _HASHES:
        return None, name
    return _SigAlg("pkcs1" if kind == "rsassa_pkcs1v15" else "ecdsa", hash_name), name


_SHORT_NAMES = {  # RFC 4514's attribute names, as cryptography's Name.rfc4514_string writes them
    "2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
    "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC", "0.9.2342.19200300.100.1.1": "UID"}
_COMMON_NAME = "2.5.4.3"
_KEY_USAGES = {"digital_signature": "digital_signature", "non_repudiation": "content_commitment",
               "key_cert_sign": "key_cert_sign"}  # asn1crypto's name -> the one the checks use


def _dn_value(value: Any) -> str:
    """One attribute value escaped as RFC 4514 section 2.4 asks; bytes as #hex."""
    if isinstance(value, bytes):
        return "#" + value.hex() if value else ""
    text = str(value)
    for char in '\\"+,;<>':
        text = text.replace(char, "\\" + char)
    text = text.replace("\0", "\\00")
    if text[:1] in ("#", " "):
        text = "\\" + text
    if text.endswith(" "):
        text = text[:-1] + "\\ "
    return text


def _rfc4514(name: Any) -> str:
    """An asn1crypto Name as RFC 4514 text, last RDN first (for messages)."""
    return ",".join("+".join(f"{_SHORT_NAMES.get(ava['type'].dotted, ava['type'].dotted)}="
                             f"{_dn_value(ava['value'].native)}" for ava in rdn) for rdn in reversed(list(name.chosen)))


def _name_values(name: Any, oid: str) -> Tuple[str, ...]:
    return tuple(str(ava["value"].native) for rdn in name.chosen for ava in rdn if ava["type"].dotted == oid)


_BASIC_CONSTRAINTS, _KEY_USAGE, _EXTENDED_KEY_USAGE = "2.5.29.19", "2.5.29.15", "2.5.29.37"
_STRICT_DER = (_BASIC_CONSTRAINTS, _EXTENDED_KEY_USAGE)


def _extensions(tbs: Any) -> Dict[str, Any]:
    """Each extension's parsed value by dotted OID, every one read to its end: a certificate with
    a malformed or repeated extension is refused, as OpenSSL marks it invalid. basicConstraints and
    extendedKeyUsage, which the path checks read, must be exactly DER (asn1crypto would skip an
    element too many, cryptography refuses it); keyUsage only has to parse: real CAs pad its bits
    (two Trustwave roots in Debian's bundle), and OpenSSL and cryptography take them."""
    found: Dict[str, Any] = {}
    if isinstance(tbs["extensions"], asn1_core.Void):
        return found
    for ext in tbs["extensions"]:
        oid = ext["extn_id"].dotted
        if oid in found:
            raise ValueError(f"extension {ext['extn_id'].native} appears twice")
        ext["critical"].native  # a BOOLEAN that is not one fails here
        value = ext["extn_value"].parsed
        if value is not None:
            value.native  # parses the whole value
            raw = ext["extn_value"].contents
            if oid in _STRICT_DER and type(value).load(raw).dump(force=True) != raw:
                raise ValueError(f"extension {ext['extn_id'].native} is not DER")
        found[oid] = value
    return found


def _public_key(spki: Any) -> object:
    """The subject's key for cryptography to verify with; None for a type otad cannot use."""
    try:
        if spki.algorithm == "rsa":
            numbers = spki["public_key"].parsed
            return rsa.RSAPublicNumbers(numbers["public_exponent"].native, numbers["modulus"].native).public_key()
        if spki.algorithm == "ec":
            kind, curve = spki["algorithm"]["parameters"].name, spki["algorithm"]["parameters"].chosen
            if kind != "named":
                return None
            curve_type = ec.get_curve_for_oid(ObjectIdentifier(curve.dotted))
            return ec.EllipticCurvePublicKey.from_encoded_point(curve_type(), spki["public_key"].native)
    except (UnsupportedAlgorithm, ValueError, LookupError):
        return None
    return None


def _read_cert(der: bytes) -> _Cert:
    parsed = _checked(asn1_x509.Certificate.load(der, strict=True))
    tbs = _checked(parsed["tbs_certificate"])
    extensions = _extensions(tbs)
    bc, ku, eku = (extensions.get(oid) for oid in (_BASIC_CONSTRAINTS, _KEY_USAGE, _EXTENDED_KEY_USAGE))
    validity = _checked(tbs["validity"])
    sig_alg, sig_alg_name = _sig_alg(parsed["signature_algorithm"])
    return _Cert(
        der=der, subject=_rfc4514(tbs["subject"]), subject_key=tbs["subject"].hashable,
        issuer=_rfc4514(tbs["issuer"]), issuer_key=tbs["issuer"].hashable, serial=tbs["serial_number"].native,
        common_names=_name_values(tbs["subject"], _COMMON_NAME),
        not_before=validity["not_before"].native, not_after=validity["not_after"].native,
        v1=tbs["version"].native == "v1",
        ca=None if bc is None else bc["ca"].native, pathlen=None if bc is None else bc["path_len_constraint"].native,
        key_usage=None if ku is None else frozenset(_KEY_USAGES[n] for n in ku.native if n in _KEY_USAGES),
        eku=None if eku is None else frozenset(purpose.dotted for purpose in eku),
        public_key=_public_key(tbs["subject_public_key_info"]), tbs=tbs.dump(),
        signature=parsed["signature_value"].native, sig_alg=sig_alg, sig_alg_name=sig_alg_name)


def _parse_cert(der: bytes, what: str, where: str) -> _Cert:
    try:
        return _read_cert(der)
    except Exception as exc:  # asn1crypto and cryptography parse lazily and raise many types
        raise SignatureError(f"{what} cannot be parsed: {exc}", where) from exc


def _checked(seq: Any) -> Any:
    """`seq` with every field built: asn1crypto checks a field's tag only when it is first read."""
    for name in seq:
        seq[name]
    return seq


def _read_signer(si: Any) -> _Signer:
    sid = _checked(si)["sid"]
    if sid.name == "issuer_and_serial_number":
        ias = sid.chosen
        key: Tuple[Any, ...] = ("ias", ias["issuer"].hashable, ias["serial_number"].native)
        text = f"issuer '{ias['issuer'].human_friendly}', serial {ias['serial_number'].native}"
    else:
        key = ("ski", sid.chosen.native)
        text = f"subjectKeyIdentifier {sid.chosen.native.hex()}"
    sig_alg, sig_alg_name = _sig_alg(si["signature_algorithm"])
    attrs = si["signed_attrs"]
    signed, digests, types = None, [], []
    if not isinstance(attrs, asn1_core.Void):
        raw = attrs.dump()  # the bytes as received, tagged [0] IMPLICIT; signed as SET OF
        signed = b"\x31" + raw[1:]
        for attr in attrs:
            if attr["type"].native == "message_digest":
                digests += list(attr["values"].native)
            elif attr["type"].native == "content_type":
                types += [str(v) for v in attr["values"].native]
    return _Signer(key, text, str(si["digest_algorithm"]["algorithm"].native), sig_alg, sig_alg_name,
                   si["signature"].native, signed, tuple(digests), tuple(types))


def _read_cms_cert(choice: Any) -> Optional[_CmsCert]:
    if choice.name != "certificate":
        return None
    cert = choice.chosen
    try:
        return _CmsCert(cert.dump(), cert.subject.hashable, cert.issuer.hashable,
                        cert["tbs_certificate"]["serial_number"].native, cert.key_identifier)
    except Exception as exc:  # an unreadable extra certificate is skipped; the signer's must parse
        log.debug("%s: skipping unreadable certificate: %s", SIG_NAME, exc)
        return None


def _read_cms(sig: bytes) -> _Cms:
    info = _checked(asn1_cms.ContentInfo.load(sig, strict=True))
    if info["content_type"].native != "signed_data":
        raise ValueError(f"content type is {info['content_type'].native}, expected signed_data")
    data = _checked(info["content"])
    encap = _checked(data["encap_content_info"])
    certs = [] if isinstance(data["certificates"], asn1_core.Void) else list(data["certificates"])
    return _Cms(str(encap["content_type"].native), not isinstance(encap["content"], asn1_core.Void),
                tuple(str(alg["algorithm"].native) for alg in data["digest_algorithms"]),
                tuple(c for c in map(_read_cms_cert, certs) if c is not None),
                tuple(_read_signer(si) for si in data["signer_infos"]))


def _parse_cms(sig: bytes) -> _Cms:
    if not sig:
        raise SignatureError("empty: expected DER CMS SignedData", SIG_NAME)
    if sig.lstrip().startswith(b"-----BEGIN"):
        raise SignatureError("not DER CMS SignedData (PEM?): sign with `openssl cms -sign ... -outform DER`",
                             SIG_NAME)
    try:
        return _read_cms(sig)
    except Exception as exc:  # asn1crypto parses lazily and raises many types; so no input escapes
        raise SignatureError(f"not DER CMS SignedData: {str(exc)[:200]}", SIG_NAME) from exc


def _verify(key: object, alg: _SigAlg, hash_name: str, signature: bytes, data: bytes) -> bool:
    """Whether `key` made `signature` over `data`; False for any mismatch of key and algorithm."""
    hash_cls = _HASHES.get(alg.hash or hash_name)
    if hash_cls is None:
        return False
    try:
        if alg.kind in ("pkcs1", "pss") and isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if alg.kind == "pss":
                pad = padding.PSS(padding.MGF1(_HASHES[alg.pss_mgf_hash]()), alg.pss_salt)
            key.verify(signature, data, pad, hash_cls())
            return True
        if alg.kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hash_cls()))
            return True
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return False


def _refuse_private_key(pem: bytes, source: str) -> None:
    """A trust file is public: a signing key on the device is a mistake to stop at, not to skip."""
    for block in _PEM_BLOCK.finditer(pem):
        if block.group(1).endswith(b"PRIVATE KEY"):
            raise SignatureError(f"holds a private key (-----BEGIN {block.group(1).decode()}-----): the device "
                                 "needs only the CA certificate (CMS) or the public key (--signature rsa); keep "
                                 "the signing key on the build host", source)


def _load_pem_certificates(pem: bytes, source: str) -> List[_Cert]:
    """Every `CERTIFICATE` block of a PEM file (other public blocks are skipped); at least one."""
    _refuse_private_key(pem, source)
    certs: List[_Cert] = []
    for block in _PEM_BLOCK.finditer(pem):
        if block.group(1) != b"CERTIFICATE":
            log.debug("%s: skipping PEM block %s", source, block.group(1).decode())
            continue
        what = f"certificate #{len(certs) + 1}"
        try:
            der = base64.b64decode(b"".join(block.group(2).split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"{what} is not valid base64: {exc}", source) from exc
        certs.append(_parse_cert(der, what, source))
    if not certs and any(b.group(1).endswith(b"PUBLIC KEY") for b in _PEM_BLOCK.finditer(pem)):
        raise SignatureError("holds a bare public key, no certificate: for raw RSA signatures use "
                             '--signature rsa (signature = "rsa" in otad.conf); CMS needs the CA certificate', source)
    if not certs:
        raise SignatureError("no PEM certificate (-----BEGIN CERTIFICATE-----) in the trust file", source)
    return certs


def _read_file(path: str) -> bytes:
    return read_bytes(path, "the trust file", limit=MAX_TRUST_FILE_BYTES, error=SignatureError)


# --- CMS ---------------------------------------------------------------------------------------

class CmsVerifier:
    """SWUpdate's default: DER CMS SignedData, detached, signer chaining to the trust file.

    Every PEM certificate in `trusted_pem` is a trust anchor. A path runs from the signer up
    through trust-file certificates as far as they reach (to a self-issued root, if present)
    and every certificate on it is checked; it must contain at least one trust-file
    certificate (a signer that is itself in the file counts). Unlike plain OpenSSL, a path may
    end at an intermediate when its root is not in the file (`openssl -partial_chain`).
    """

    def __init__(self, trusted_pem: bytes, *, source: str = "CA file", purpose: str = "emailProtection",
                 forced_signer_name: Optional[str] = None, trusted_time: Optional[TrustedTime] = None,
                 clock: Callable[[], float] = time.time) -> None:
        if purpose not in PURPOSES:
            raise ConfigError(f"certificate purpose {purpose!r}: expected one of {', '.join(PURPOSES)}")
        self.source = source
        self.purpose = purpose
        self.forced_signer_name = forced_signer_name or None  # SWUpdate: empty means no check
        self.trusted_time = trusted_time or TrustedTime()
        self._clock = clock
        self._anchors: Dict[bytes, _Cert] = {c.der: c for c in _load_pem_certificates(trusted_pem, source)}
        self._by_subject: Dict[str, List[_Cert]] = {}
        for cert in self._anchors.values():
            self._by_subject.setdefault(cert.subject_key, []).append(cert)

    @classmethod
    def from_file(cls, path: str, **kw: Any) -> CmsVerifier:
        return cls(_read_file(path), source=path, **kw)

    def verify(self, content: bytes, signature: bytes) -> SignerInfo:
        cms = _parse_cms(signature)
        if not cms.signers:
            raise SignatureError("CMS SignedData has no SignerInfo", SIG_NAME)
        if cms.content_type != "data":
            raise SignatureError(f"signed content type is {cms.content_type}, expected data", SIG_NAME)
        if cms.embedded:  # as SWUpdate/OpenSSL with -content: the sw-description bytes are what counts
            log.debug("%s carries embedded content; verifying sw-description instead", SIG_NAME)
        at, untrusted = self.trusted_time.now(self._clock)
        # As `openssl cms -verify`: every SignerInfo must verify, not just one.
        signers = []
        for n, signer in enumerate(cms.signers, 1):
            try:
                signers.append(self._verify_signer(cms, signer, content, at, untrusted))
            except SignatureError as exc:
                if len(cms.signers) > 1:
                    exc.what = f"signer #{n} of {len(cms.signers)}: {exc.what}"
                    exc.args = (str(exc),)
                raise
        log.debug("%s: signed by %s, issuer %s, trusted via %s", SIG_NAME, signers[0].subject,
                  signers[0].issuer, self.source)
        return signers[0]

    def _verify_signer(self, cms: _Cms, signer: _Signer, content: bytes, at: datetime,
                       untrusted: bool) -> SignerInfo:
        cert = self._signer_cert(cms, signer)
        if signer.digest not in cms.digest_algorithms:  # OpenSSL refuses this too
            raise SignatureError(f"digest algorithm {signer.digest} of the signer is not listed in "
                                 "SignedData.digestAlgorithms", SIG_NAME)
        _check_signature(signer, cert, content)
        self._check_path(cms, cert, at, untrusted)
        self._check_name(cert)
        return SignerInfo(cert.subject, cert.common_names[0] if cert.common_names else None, cert.issuer,
                          cert.serial, cert.not_before, cert.not_after, "cms", at, untrusted)

    def _signer_cert(self, cms: _Cms, signer: _Signer) -> _Cert:
        for cert in cms.certs:
            if signer.sid == ("ias", cert.issuer_key, cert.serial) or signer.sid == ("ski", cert.ski):
                return _parse_cert(cert.der, "signer certificate", SIG_NAME)
        raise SignatureError(f"signer certificate ({signer.sid_text}) is not included in the signature "
                             "(signed with -nocerts?)", SIG_NAME)

    def _check_name(self, cert: _Cert) -> None:
        wanted = self.forced_signer_name
        if wanted is None:
            return
        if not cert.common_names:
            raise SignatureError(f"signer '{cert.subject}' has no CN; the required signer is '{wanted}'", SIG_NAME)
        for cn in cert.common_names:  # as SWUpdate: every CN in the subject must match exactly
            if cn != wanted:
                raise SignatureError(f"signer CN '{cn}' is not the required '{wanted}'", SIG_NAME)

    # --- the path to the trust file ---

    def _check_path(self, cms: _Cms, leaf: _Cert, at: datetime, untrusted: bool) -> None:
        paths, notes = self._paths(leaf)
        trusted = [p for p in paths if len(p) > 1 or leaf.der in self._anchors]
        if not trusted:
            raise SignatureError(self._no_path(cms, leaf, notes), SIG_NAME)
        problems = [self._path_problem(p, at, untrusted) for p in trusted]
        if all(problems):
            raise SignatureError(str(problems[0]), SIG_NAME)

    def _paths(self, leaf: _Cert) -> Tuple[List[List[_Cert]], List[str]]:
        """Every maximal path from `leaf` up through the trust file; `notes` say why links failed."""
        paths: List[List[_Cert]] = []
        notes: List[str] = []

        def extend(path: List[_Cert]) -> None:
            top = path[-1]
            # A self-issued certificate ends the path: a self-signed signer is trusted only when the
            # trust file holds exactly it (OpenSSL refuses a same-name "mimic" too).
            issuers = [] if top.self_issued or len(path) >= _MAX_DEPTH else [
                c for c in self._by_subject.get(top.issuer_key, ()) if c not in path and _issued_by(top, c, notes)]
            if not issuers:
                paths.append(path)
            for issuer in issuers:
                if len(paths) < _MAX_PATHS:
                    extend(path + [issuer])

        extend([leaf])
        return paths, notes

    def _no_path(self, cms: _Cms, leaf: _Cert, notes: List[str]) -> str:
        what = f"signer '{leaf.subject}' does not chain to a trusted certificate in {self.source}"
        if notes:
            return f"{what}: {notes[0]}"
        if leaf.self_issued:
            return f"{what}: it is self-signed and not in that file"
        if any(c.subject_key == leaf.issuer_key for c in cms.certs):
            return (f"{what}: its issuer '{leaf.issuer}' is only in the signature, and certificates carried "
                    "there are not used to build the chain (add the intermediate to the trust file)")
        return f"{what}: its issuer '{leaf.issuer}' is not there"

    def _path_problem(self, path: Sequence[_Cert], at: datetime, untrusted: bool) -> Optional[str]:
        for cert in path:
            problem = _date_problem(cert, at, untrusted)
            if problem:
                return problem
        problem = _leaf_purpose_problem(path[0], self.purpose)
        for i, cert in enumerate(path[1:], 1):
            problem = problem or _ca_problem(cert, top=i == len(path) - 1)
            problem = problem or _ca_purpose_problem(cert, self.purpose)
            if cert.pathlen is not None and problem is None:
                below = sum(1 for c in path[1:i] if not c.self_issued)
                if below > cert.pathlen:
                    problem = (f"CA '{cert.subject}' allows {cert.pathlen} intermediate CA(s) below it "
                               f"(pathLenConstraint), the chain has {below}")
        return problem


def _issued_by(child: _Cert, issuer: _Cert, notes: List[str]) -> bool:
    """Whether `issuer`'s key made `child`'s signature (names already match)."""
    if child.sig_alg is None:
        notes.append(f"certificate '{child.subject}' is signed with {child.sig_alg_name}, "
                     "which otad does not accept")
        return False
    if _verify(issuer.public_key, child.sig_alg, "", child.signature, child.tbs):
        return True
    notes.append(f"'{issuer.subject}' there has the issuer's name but not the key that signed "
                 f"'{child.subject}'")
    return False


def _check_signature(signer: _Signer, cert: _Cert, content: bytes) -> None:
    if signer.digest not in _HASHES:
        raise SignatureError(f"digest algorithm {signer.digest} is not accepted "
                             f"(expected one of {', '.join(_HASHES)})", SIG_NAME)
    alg = signer.sig_alg
    if alg is None or (alg.hash and alg.hash != signer.digest):
        raise SignatureError(f"signature algorithm {signer.sig_alg_name} is not accepted with digest "
                             f"{signer.digest}", SIG_NAME)
    signed = content
    if signer.signed_attrs is not None:
        if signer.content_types != ("data",):
            raise SignatureError(f"signed attribute contentType is {list(signer.content_types)}, "
                                 "expected exactly [data]", SIG_NAME)
        if len(signer.message_digests) != 1:
            raise SignatureError(f"signed attributes hold {len(signer.message_digests)} messageDigest "
                                 "values, expected exactly one", SIG_NAME)
        digest = hashlib.new(signer.digest, content).digest()
        if not hmac.compare_digest(signer.message_digests[0], digest):
            raise SignatureError(f"signature does not match sw-description: its messageDigest is not the "
                                 f"{signer.digest} of these {len(content)} bytes", SIG_NAME)
        signed = signer.signed_attrs
    if not _verify(cert.public_key, alg, signer.digest, signer.signature, signed):
        raise SignatureError(f"signature does not match sw-description: the key of '{cert.subject}' did "
                             f"not make it ({signer.sig_alg_name}, {signer.digest})", SIG_NAME)


def _date_problem(cert: _Cert, at: datetime, untrusted: bool) -> Optional[str]:
    checked = f"checked at {_when(at)}" + (
        ", otad's time floor, because the system clock is earlier" if untrusted else "")
    if at > cert.not_after:
        return f"certificate '{cert.subject}' expired on {_when(cert.not_after)} ({checked})"
    if at < cert.not_before and not untrusted:  # under the floor, the true time may be any later day
        return f"certificate '{cert.subject}' is not valid before {_when(cert.not_before)} ({checked})"
    return None


def _eku_text(eku: FrozenSet[str]) -> str:
    return ", ".join(sorted(_EKU_NAMES.get(oid, oid) for oid in eku)) or "nothing"


def _leaf_purpose_problem(cert: _Cert, purpose: str) -> Optional[str]:
    """OpenSSL's smime_sign rules for emailProtection; SWUpdate's check_code_sign for codeSigning."""
    if purpose == "any":
        return None
    oid = _EKU_OIDS[purpose]
    if purpose == "codeSigning" and cert.eku is None:
        return f"purpose: certificate '{cert.subject}' has no extendedKeyUsage; codeSigning requires one"
    if cert.eku is not None and oid not in cert.eku:  # anyExtendedKeyUsage does not count (OpenSSL)
        return (f"purpose: certificate '{cert.subject}' lacks {purpose} in extendedKeyUsage "
                f"(it lists {_eku_text(cert.eku)})")
    if (purpose == "emailProtection" and cert.key_usage is not None
            and not cert.key_usage & {"digital_signature", "content_commitment"}):
        return f"purpose: certificate '{cert.subject}' keyUsage allows neither digitalSignature nor nonRepudiation"
    return None


def _ca_purpose_problem(cert: _Cert, purpose: str) -> Optional[str]:
    """OpenSSL applies the purpose to CAs too: an extendedKeyUsage on a CA must list it."""
    if purpose == "any" or cert.eku is None or _EKU_OIDS[purpose] in cert.eku:
        return None
    return (f"purpose: CA certificate '{cert.subject}' lacks {purpose} in extendedKeyUsage "
            f"(it lists {_eku_text(cert.eku)})")


def _ca_problem(cert: _Cert, *, top: bool) -> Optional[str]:
    """OpenSSL's check_ca: the top of the path may be a v1 root or a CA known only by keyUsage."""
    if cert.key_usage is not None and "key_cert_sign" not in cert.key_usage:
        return f"issuer '{cert.subject}' is not a CA: its keyUsage lacks keyCertSign"
    if cert.ca is not None:
        return None if cert.ca else f"issuer '{cert.subject}' is not a CA: basicConstraints cA is false"
    if top and ((cert.v1 and cert.self_issued) or cert.key_usage is not None):
        return None
    return f"issuer '{cert.subject}' is not a CA: it has no basicConstraints"


# --- raw RSA -----------------------------------------------------------------------------------

class RsaVerifier:
    """A bare RSA signature over SHA-256 of sw-description (`openssl dgst -sha256 -sign`).

    PKCS#1 v1.5 and PSS with any salt length are accepted (SWUpdate picks one at build time).
    No certificates, purpose or expiry: `checked_at` is just the clock reading.
    """

    def __init__(self, public_key_pem: bytes, *, source: str = "public key",
                 clock: Callable[[], float] = time.time) -> None:
        # lazy: the serialization package (ssh, pkcs12, ...) is only needed for a PEM key
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        _refuse_private_key(public_key_pem, source)
        try:
            key = load_pem_public_key(public_key_pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            if b"-----BEGIN CERTIFICATE-----" in public_key_pem:
                raise SignatureError("holds certificates, not a public key: CMS-signed bundles need "
                                     '--signature cms (signature = "cms", the default)', source) from exc
            raise SignatureError(f"not a PEM public key (-----BEGIN PUBLIC KEY-----): {exc}", source) from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise SignatureError(f"raw signatures need an RSA public key, got {type(key).__name__}", source)
        self.source = source
        self._key = key
        self._clock = clock

    @classmethod
    def from_file(cls, path: str) -> RsaVerifier:
        return cls(_read_file(path), source=path)

    def verify(self, content: bytes, signature: bytes) -> SignerInfo:
        bits = self._key.key_size
        size = (bits + 7) // 8
        if len(signature) != size:
            hint = " (it looks like CMS; is the device set up for raw RSA?)" if signature[:1] == b"\x30" else ""
            raise SignatureError(f"not a raw RSA-{bits} signature: {len(signature)} bytes, expected {size}{hint}",
                                 SIG_NAME)
        pads = (padding.PKCS1v15(), padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO))
        for pad in pads:
            try:
                self._key.verify(signature, content, pad, hashes.SHA256())
            except (InvalidSignature, ValueError):
                continue
            return SignerInfo("", None, "", 0, None, None, "rsa", self._now(), False)
        raise SignatureError(f"signature does not match sw-description (raw RSA-{bits} sha256, PKCS#1 v1.5 or "
                             f"PSS, key {self.source})", SIG_NAME)

    def _now(self) -> datetime:
        try:
            return datetime.fromtimestamp(self._clock(), timezone.utc)
        except (OverflowError, OSError, ValueError):
            return datetime.fromtimestamp(0, timezone.utc)
