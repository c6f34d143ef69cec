"""Certificates as otad.swu.signature reads them (asn1crypto), against cryptography.x509's reading
of the same DER: every field the path checks use, and the same refusals.

otad stopped importing cryptography.x509 on the device (its import is most of `otad install`'s
start-up on a Pi Zero); these tests hold the new reader to the old one's results.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
from typing import Any, List, Optional

import pytest
from asn1crypto import core as asn1_core, x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from otad.errors import SignatureError
from otad.swu.signature import _parse_cert
from tests.pki import CODE_SIGNING, EMAIL, SERVER_AUTH, cached_key, now

UTC = datetime.timezone.utc


def _ext(cert: x509.Certificate, cls: Any) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _as_cryptography_reads_it(der: bytes) -> dict:
    """What the reader before asn1crypto built from cryptography.x509 (its code, kept here)."""
    cert = x509.load_der_x509_certificate(der)
    bc, ku, eku = _ext(cert, x509.BasicConstraints), _ext(cert, x509.KeyUsage), _ext(cert, x509.ExtendedKeyUsage)
    before = getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before.replace(tzinfo=UTC)
    after = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=UTC)
    return dict(
        subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(), serial=cert.serial_number,
        common_names=tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)),
        not_before=before, not_after=after, v1=cert.version == x509.Version.v1,
        ca=bc.ca if bc else None, pathlen=bc.path_length if bc else None,
        key_usage=None if ku is None else frozenset(
            n for n in ("digital_signature", "content_commitment", "key_cert_sign") if getattr(ku, n)),
        eku=None if eku is None else frozenset(oid.dotted_string for oid in eku),
        public_key=cert.public_key().public_numbers(), tbs=cert.tbs_certificate_bytes, signature=cert.signature)


def _as_otad_reads_it(der: bytes) -> dict:
    cert = _parse_cert(der, "certificate", "test")
    fields = {name: getattr(cert, name) for name in (
        "subject", "issuer", "serial", "common_names", "not_before", "not_after", "v1", "ca", "pathlen",
        "key_usage", "eku", "tbs", "signature")}
    fields["public_key"] = cert.public_key.public_numbers()  # type: ignore[attr-defined]
    return fields


def _name(*rdns: List[x509.NameAttribute]) -> x509.Name:
    return x509.Name([x509.RelativeDistinguishedName(rdn) for rdn in rdns])


def _cert(subject: x509.Name, *, key: str = "rsa", extensions: Optional[list] = None,
          serial: int = 4711) -> bytes:
    private = cached_key(key, "reading")
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(_name([x509.NameAttribute(
        NameOID.COMMON_NAME, "issuer, with a comma")])).public_key(private.public_key()).serial_number(serial)
        .not_valid_before(datetime.datetime(2024, 2, 29, 12, 0, 1, tzinfo=UTC))
        .not_valid_after(datetime.datetime(2051, 1, 1, tzinfo=UTC)))  # GeneralizedTime after 2049
    for ext, critical in extensions or []:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(private, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _ku(*bits: str) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign")
    return x509.KeyUsage(encipher_only=False, decipher_only=False, **{n: n in bits for n in names})


CN = NameOID.COMMON_NAME
CASES = {
    "plain leaf": (_name([x509.NameAttribute(CN, "otad signer")]), "rsa", [
        (x509.BasicConstraints(ca=False, path_length=None), True), (_ku("digital_signature"), True),
        (x509.ExtendedKeyUsage([EMAIL]), False)]),
    "names to escape": (_name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")],
                              [x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'A "quoted", <odd>; +co\\')],
                              [x509.NameAttribute(CN, "#leading hash ")], [x509.NameAttribute(CN, " two CNs")],
                              [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "dev@example.org")],
                              [x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "example"),
                               x509.NameAttribute(NameOID.USER_ID, "uid-7")],
                              [x509.NameAttribute(NameOID.SERIAL_NUMBER, "0042")],
                              [x509.NameAttribute(NameOID.LOCALITY_NAME, "Zürich ünïcode")]), "ec256", []),
    "CA with pathlen": (_name([x509.NameAttribute(CN, "intermediate")]), "ec384", [
        (x509.BasicConstraints(ca=True, path_length=2), True), (_ku("key_cert_sign", "crl_sign"), True),
        (x509.ExtendedKeyUsage([CODE_SIGNING, SERVER_AUTH, x509.ObjectIdentifier("1.2.3.4.5")]), False),
        (x509.SubjectAlternativeName([x509.DNSName("device.example")]), False)]),
    "nonRepudiation only": (_name([x509.NameAttribute(CN, "archiver")]), "rsa", [
        (_ku("content_commitment"), False), (x509.BasicConstraints(ca=False, path_length=None), False)]),
    "no extensions": (_name(), "rsa", []),
}


@pytest.mark.parametrize("case", CASES)
def test_every_field_reads_as_cryptography_reads_it(case: str) -> None:
    subject, key, extensions = CASES[case]
    der = _cert(subject, key=key, extensions=extensions, serial=(1 << 150) + 3)
    assert _as_otad_reads_it(der) == _as_cryptography_reads_it(der)


def test_a_v1_certificate_reads_as_v1(tmp_path) -> None:
    import subprocess

    subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=v1 root",
                    "-keyout", tmp_path / "k.pem", "-out", tmp_path / "r.csr"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", tmp_path / "r.csr", "-signkey", tmp_path / "k.pem",
                    "-days", "30", "-outform", "DER", "-out", tmp_path / "v1.der"], check=True, capture_output=True)
    der = (tmp_path / "v1.der").read_bytes()
    assert asn1_x509.Certificate.load(der)["tbs_certificate"]["version"].native == "v1"
    assert _as_otad_reads_it(der) == _as_cryptography_reads_it(der)


def _resigned(der: bytes, edit: Any) -> bytes:
    """`der` with its TBS changed by `edit` and signed again by the same key."""
    cert = asn1_x509.Certificate.load(der)
    tbs = cert["tbs_certificate"]
    edit(tbs)
    data = tbs.dump()
    signature = cached_key("rsa", "reading").sign(data, padding.PKCS1v15(), hashes.SHA256())
    return asn1_x509.Certificate({"tbs_certificate": asn1_x509.TbsCertificate.load(data),
                                  "signature_algorithm": cert["signature_algorithm"],
                                  "signature_value": signature}).dump()


def _twice(tbs: Any) -> None:
    tbs["extensions"] = asn1_x509.Extensions([tbs["extensions"][0].copy(), tbs["extensions"][0].copy()])


def _garbled_basic_constraints(tbs: Any) -> None:
    # basicConstraints, critical, its value a SEQUENCE holding an OCTET STRING (not BOOLEAN/INTEGER)
    raw = bytes.fromhex("300f" "0603551d13" "0101ff" "0405" "3003040100")
    tbs["extensions"] = asn1_x509.Extensions([asn1_x509.Extension.load(raw)])


@pytest.mark.parametrize("edit, words", [(_twice, "appears twice"), (_garbled_basic_constraints, "cannot be parsed")])
def test_a_repeated_or_garbled_extension_is_refused_by_both(edit: Any, words: str) -> None:
    good = _cert(_name([x509.NameAttribute(CN, "x")]), extensions=[
        (x509.BasicConstraints(ca=False, path_length=None), True)])
    bad = _resigned(good, edit)
    with pytest.raises(SignatureError, match=words):
        _parse_cert(bad, "certificate", "test")
    with pytest.raises(Exception):
        _as_cryptography_reads_it(bad)


def test_an_unusable_key_type_reads_as_no_key() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    der = (x509.CertificateBuilder().subject_name(_name()).issuer_name(_name()).public_key(private.public_key())
           .serial_number(1).not_valid_before(now()).not_valid_after(now() + datetime.timedelta(days=1))
           .sign(private, None).public_bytes(serialization.Encoding.DER))
    assert _parse_cert(der, "certificate", "test").public_key is None


def test_rsa_and_ec_keys_verify_as_cryptographys_own() -> None:
    for kind in ("rsa", "ec256", "ec384"):
        der = _cert(_name([x509.NameAttribute(CN, kind)]), key=kind)
        ours = _parse_cert(der, "certificate", "test").public_key
        theirs = x509.load_der_x509_certificate(der).public_key()
        assert isinstance(ours, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
        assert ours.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == \
            theirs.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


DEBIAN_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@pytest.mark.skipif(not os.path.exists(DEBIAN_BUNDLE), reason="Debian's ca-certificates is not installed")
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # a root with serial 0
def test_every_certificate_of_debians_ca_bundle_reads_as_cryptography_reads_it() -> None:
    """Real CAs' certificates: odd names, padded keyUsage bits, every key type Debian ships."""
    pem = open(DEBIAN_BUNDLE, "rb").read()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", pem, re.S)
    assert len(blocks) > 50
    for block in blocks:
        der = base64.b64decode(b"".join(block.split()))
        assert _as_otad_reads_it(der) == _as_cryptography_reads_it(der)
