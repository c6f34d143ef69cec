"""Signing sw-description as swugenerator's -k asks: a detached CMS signature or raw RSA.

Loads the key, certificate, chain and password files (PEM, or a DER certificate; the key must
belong to the certificate) and signs the exact bytes of the edited template. cryptography
loads on first use: importing this module stays cheap for otad's command line.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Tuple, Union

from otad.errors import ConfigError
from otad.mkswu.inputs import read_input

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

log = logging.getLogger(__name__)

SIGN_FORMS = "CMS,KEY,CERT[,PASSFILE][,CHAIN] or RSA,KEY[,PASSFILE]"

Signer = Union["CmsSigner", "RsaSigner"]


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
        if passfile and not chain and b"-----BEGIN CERTIFICATE-----" in read_input(passfile, "CMS chain/password file"):
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

    data = read_input(path, "certificate file")
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks] or [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}", path) from exc


def _load_key(path: str, passfile: str) -> object:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = read_input(path, "private key")
    # Like `openssl -passin file:`: the first line is the password.
    password = read_input(passfile, "password file").split(b"\n", 1)[0].rstrip(b"\r") if passfile else None
    try:
        try:
            return serialization.load_pem_private_key(data, password)
        except TypeError:
            if password is None:
                raise ConfigError("the private key is encrypted: give a password file", path) from None
            return serialization.load_pem_private_key(data, None)  # openssl ignores a needless password
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("not a PEM private key, or the password is wrong", path) from exc
