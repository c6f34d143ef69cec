"""Small test PKIs built with `cryptography`, signatures made by the real `openssl` CLI.

For any test that needs a signed sw-description (signature, installer and CLI tests):

    pki = make_pki(tmp_path)                                   # root CA -> signer, RSA-2048
    cms_sign(tmp_path / "sw-description", tmp_path / "sw-description.sig", pki)
    verifier = CmsVerifier.from_file(str(pki.ca_pem))

    keys = rsa_keypair(tmp_path)                               # raw RSA (`openssl dgst`)
    rsa_sign(tmp_path / "sw-description", tmp_path / "sw-description.sig", keys.key)
    verifier = RsaVerifier.from_file(str(keys.pub))

Everything is written as PEM below the given directory (keys unencrypted PKCS#8). Keys are
cached per (pki name, role, key kind) for the whole test session because RSA key generation
dominates the run time: two PKIs with different `name`s have different keys.
"""

from __future__ import annotations

import datetime
import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]

EMAIL = ExtendedKeyUsageOID.EMAIL_PROTECTION
CODE_SIGNING = ExtendedKeyUsageOID.CODE_SIGNING
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
ANY_EKU = x509.ObjectIdentifier("2.5.29.37.0")

OPENSSL = shutil.which("openssl")
UTC = datetime.timezone.utc

#: keyUsage bits accepted by `issue(key_usage=...)`; the rest are False.
KEY_USAGE_BITS = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                  "key_agreement", "key_cert_sign", "crl_sign")
_UNSET: Tuple[str, ...] = ("<unset>",)


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


@functools.lru_cache(maxsize=None)
def cached_key(kind: str, slot: str) -> PrivateKey:
    """One key per (kind, slot) for the whole session; see `new_key` for the kinds."""
    return new_key(kind)


def new_key(kind: str = "rsa") -> PrivateKey:
    """`rsa` (2048 bits), `rsa3072`, `ec256` (P-256) or `ec384` (P-384)."""
    if kind in ("rsa", "rsa2048", "rsa3072"):
        return rsa.generate_private_key(65537, 3072 if kind == "rsa3072" else 2048)
    if kind in ("ec256", "ec384"):
        return ec.generate_private_key(ec.SECP256R1() if kind == "ec256" else ec.SECP384R1())
    raise ValueError(f"unknown key kind {kind!r}")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()


def issue(cn: str, *, issuer: Optional[Issued] = None, key: Union[str, PrivateKey] = "rsa",
          ca: bool = False, pathlen: Optional[int] = None,
          eku: Optional[Sequence[x509.ObjectIdentifier]] = (EMAIL,),
          key_usage: Optional[Sequence[str]] = _UNSET,
          not_before: Optional[datetime.datetime] = None, not_after: Optional[datetime.datetime] = None,
          serial: Optional[int] = None, basic_constraints: bool = True, subject_key_id: bool = True) -> Issued:
    """A certificate for `cn`, signed by `issuer` (self-signed when None).

    `key` is a key kind for `new_key` or a key. `eku=None` leaves extendedKeyUsage out (CAs
    get none by default); `key_usage=None` leaves keyUsage out; by default a CA gets
    keyCertSign+cRLSign and a leaf digitalSignature. Validity defaults to yesterday .. +1 year.
    """
    private = new_key(key) if isinstance(key, str) else key
    if ca and eku == (EMAIL,):
        eku = None
    if key_usage == _UNSET:
        key_usage = ("key_cert_sign", "crl_sign") if ca else ("digital_signature",)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.cert.subject if issuer else name)
               .public_key(private.public_key())
               .serial_number(serial if serial is not None else x509.random_serial_number())
               .not_valid_before(not_before or now() - datetime.timedelta(days=1))
               .not_valid_after(not_after or now() + datetime.timedelta(days=365)))
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen if ca else None),
                                        critical=True)
    if key_usage is not None:
        bits = {b: (b in key_usage) for b in KEY_USAGE_BITS}
        builder = builder.add_extension(x509.KeyUsage(encipher_only=False, decipher_only=False, **bits),
                                        critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if subject_key_id:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(private.public_key()),
                                        critical=False)
    signer_key = issuer.key if issuer else private
    cert = builder.sign(signer_key, hashes.SHA256())
    return Issued(cert, private)


def write_pem(path: Path, *certs: Union[Issued, x509.Certificate]) -> Path:
    """Write the certificates to `path` as concatenated PEM."""
    pems = [(c.cert if isinstance(c, Issued) else c).public_bytes(serialization.Encoding.PEM) for c in certs]
    path.write_bytes(b"".join(pems))
    return path


def write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@dataclass(frozen=True)
class Pki:
    """A trust file plus a signer. Paths are what `openssl cms -sign` and otad take."""

    dir: Path
    ca_pem: Path                 # the device's trust file (root, plus the intermediate if trusted)
    signer_cert: Path            # the leaf certificate, PEM
    signer_key: Path             # its key, PEM
    chain_pem: Optional[Path]    # the intermediate, for `-certfile`; None without intermediate
    root: Issued
    intermediate: Optional[Issued]
    signer: Issued


def make_pki(directory: Path, *, name: str = "pki", key: str = "rsa", intermediate: bool = False,
             intermediate_trusted: bool = True, signer_cn: str = "otad test signer",
             root_cn: str = "otad test root",
             eku: Optional[Sequence[x509.ObjectIdentifier]] = (EMAIL,),
             key_usage: Optional[Sequence[str]] = ("digital_signature",),
             not_before: Optional[datetime.datetime] = None,
             not_after: Optional[datetime.datetime] = None) -> Pki:
    """root CA [-> intermediate CA] -> signer, written to `directory/name/`.

    `key` is the kind of every key in it (`rsa`, `rsa3072`, `ec256`, `ec384`). `eku`,
    `key_usage`, `not_before`, `not_after` shape the signer certificate (see `issue`). With
    `intermediate=True` the intermediate goes into `chain_pem` and, when
    `intermediate_trusted`, also into `ca_pem` next to the root.
    """
    out = directory / name
    out.mkdir(parents=True, exist_ok=True)
    root = issue(root_cn, key=cached_key(key, f"{name}/root"), ca=True)
    parent, inter = root, None
    if intermediate:
        inter = issue(f"{root_cn} intermediate", issuer=root, key=cached_key(key, f"{name}/inter"), ca=True)
        parent = inter
    signer = issue(signer_cn, issuer=parent, key=cached_key(key, f"{name}/signer"), eku=eku,
                   key_usage=key_usage, not_before=not_before, not_after=not_after)
    trusted: List[Issued] = [root] + ([inter] if inter and intermediate_trusted else [])
    return Pki(
        dir=out,
        ca_pem=write_pem(out / "ca.pem", *trusted),
        signer_cert=write_pem(out / "signer.pem", signer),
        signer_key=write_key(out / "signer.key", signer.key),
        chain_pem=write_pem(out / "chain.pem", inter) if inter else None,
        root=root, intermediate=inter, signer=signer,
    )


def signer_files(directory: Path, signer: Issued, name: str = "signer") -> Tuple[Path, Path]:
    """Write any `Issued` as (cert.pem, key.pem) for `cms_sign(..., signer=...)`."""
    return (write_pem(directory / f"{name}.pem", signer), write_key(directory / f"{name}.key", signer.key))


def _run(args: Sequence[str]) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    assert OPENSSL, "openssl CLI not found"
    return subprocess.run([OPENSSL, *args], capture_output=True, check=False)


def cms_sign(content: Path, sig: Path, pki: Optional[Pki] = None, *, signer: Optional[Tuple[Path, Path]] = None,
             binary: bool = True, certfile: Union[Path, None, str] = "chain", extra: Iterable[str] = ()) -> Path:
    """Sign like SWUpdate's docs: `openssl cms -sign ... -outform DER -nosmimecap -binary`.

    The signer is `pki`'s (or an explicit `signer=(cert, key)`). `certfile` defaults to the
    PKI's chain (intermediate) when it has one; pass None to leave it out or a path to add
    other certificates. `binary=False` drops `-binary` (openssl then signs CRLF-canonical text).
    """
    cert, key = signer if signer else (pki.signer_cert, pki.signer_key)  # type: ignore[union-attr]
    args = ["cms", "-sign", "-in", str(content), "-out", str(sig), "-signer", str(cert), "-inkey", str(key),
            "-outform", "DER", "-nosmimecap"]
    if binary:
        args.append("-binary")
    chain = pki.chain_pem if (certfile == "chain" and pki is not None) else (None if certfile == "chain" else certfile)
    if chain is not None:
        args += ["-certfile", str(chain)]
    args += list(extra)
    done = _run(args)
    if done.returncode != 0:
        raise RuntimeError(f"openssl cms -sign failed: {done.stderr.decode(errors='replace')}")
    return sig


def pkcs7_sign(content: bytes, pki: Pki, hash_alg: Optional[hashes.HashAlgorithm] = None) -> bytes:
    """A detached DER signature made by cryptography's PKCS7SignatureBuilder (no openssl)."""
    opts = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities]
    return (pkcs7.PKCS7SignatureBuilder().set_data(content)
            .add_signer(pki.signer.cert, pki.signer.key, hash_alg or hashes.SHA256())  # type: ignore[arg-type]
            .sign(serialization.Encoding.DER, opts))


def openssl_cms_verify(content: Path, sig: Path, ca_pem: Path, *, purpose: str = "smimesign",
                       extra: Iterable[str] = ()) -> Tuple[bool, str]:
    """The laxer CLI cross-check of otad.swu.signature (uses CMS-carried certificates).

    Returns (accepted, stderr). Never without `-no-CApath -no-CAstore`: the system store
    would be trusted too.
    """
    done = _run(["cms", "-verify", "-binary", "-inform", "DER", "-in", str(sig), "-content", str(content),
                 "-CAfile", str(ca_pem), "-no-CApath", "-no-CAstore", "-purpose", purpose, *extra,
                 "-out", "/dev/null"])
    return done.returncode == 0, done.stderr.decode(errors="replace")


@dataclass(frozen=True)
class RsaKeys:
    key: Path   # private key, PEM
    pub: Path   # public key, PEM (what the device holds)


def rsa_keypair(directory: Path, *, bits: int = 2048, name: str = "rsa") -> RsaKeys:
    """An RSA key pair for raw signatures, written as `name.key` / `name.pub.pem`."""
    private = cached_key("rsa3072" if bits == 3072 else "rsa", f"raw/{name}")
    assert isinstance(private, rsa.RSAPrivateKey)
    directory.mkdir(parents=True, exist_ok=True)
    pub = directory / f"{name}.pub.pem"
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return RsaKeys(write_key(directory / f"{name}.key", private), pub)


def rsa_sign(content: Path, sig: Path, key: Path, *, pss_saltlen: Optional[str] = None) -> Path:
    """`openssl dgst -sha256 -sign key -out sig content`, PKCS#1 v1.5 or, with `pss_saltlen`
    (`digest`, `max`, `auto` or a number), RSA-PSS."""
    args = ["dgst", "-sha256", "-sign", str(key), "-out", str(sig)]
    if pss_saltlen is not None:
        args += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", f"rsa_pss_saltlen:{pss_saltlen}"]
    done = _run([*args, str(content)])
    if done.returncode != 0:
        raise RuntimeError(f"openssl dgst -sign failed: {done.stderr.decode(errors='replace')}")
    return sig
