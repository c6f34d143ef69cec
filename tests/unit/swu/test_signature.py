"""otad.swu.signature against signatures made by the real `openssl` CLI (and by cryptography).

`openssl cms -verify` (with -no-CApath -no-CAstore) is the oracle where
otad's rules match it; where they deliberately differ (CMS-carried intermediates, a trust file
without its root, SHA-1) the test shows both answers.
"""

from __future__ import annotations

import datetime
import logging
import subprocess
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import pytest
from asn1crypto import cms as asn1_cms  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otad import RELEASE_DATE
from otad.errors import ConfigError, SignatureError
from otad.swu.signature import CmsVerifier, RsaVerifier, SignerInfo, TrustedTime
from tests.pki import (ANY_EKU, CODE_SIGNING, EMAIL, OPENSSL, SERVER_AUTH, Pki, cms_sign, issue, make_pki, now,
                       openssl_cms_verify, pkcs7_sign, rsa_keypair, rsa_sign, signer_files, write_pem)

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl CLI to make signatures")

DAY = datetime.timedelta(days=1)
TEXT = b'software =\n{\n\tversion = "1.0.0";\n\thardware-compatibility: [ "1.0" ];\n};\n'
FLOOR = TrustedTime().floor


@pytest.fixture
def content(tmp_path: Path) -> Path:
    path = tmp_path / "sw-description"
    path.write_bytes(TEXT)
    return path


def sign(pki: Pki, content: Path, **kw: object) -> bytes:
    return cms_sign(content, content.parent / f"{pki.dir.name}.sig", pki, **kw).read_bytes()  # type: ignore[arg-type]


def verifier(pki: Pki, **kw: object) -> CmsVerifier:
    return CmsVerifier.from_file(str(pki.ca_pem), **kw)


def refused(v: object, content: bytes, sig: bytes, *parts: str) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        v.verify(content, sig)  # type: ignore[attr-defined]
    for part in parts:
        assert part in str(caught.value)
    return caught.value


def der_to_pem(sig: Path) -> bytes:
    done = subprocess.run([str(OPENSSL), "cms", "-cmsout", "-inform", "DER", "-in", str(sig), "-outform", "PEM"],
                          capture_output=True, check=True)
    return done.stdout


# --- good signatures ---------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["rsa", "ec256", "ec384"])
def test_openssl_signature_from_signer_under_root_verifies(tmp_path: Path, content: Path, key: str) -> None:
    pki = make_pki(tmp_path, key=key, name=f"k-{key}")
    info = verifier(pki).verify(TEXT, sign(pki, content))
    assert isinstance(info, SignerInfo)
    assert (info.subject, info.common_name, info.issuer, info.method) == (
        "CN=otad test signer", "otad test signer", "CN=otad test root", "cms")
    assert info.serial == pki.signer.cert.serial_number
    assert info.not_after is not None and info.not_after > now()
    assert not info.clock_untrusted and abs(info.checked_at - now()) < datetime.timedelta(minutes=5)


@pytest.mark.parametrize("extra", [["-md", "sha384"], ["-md", "sha512"], ["-keyopt", "rsa_padding_mode:pss"],
                                   ["-noattr"]], ids=["sha384", "sha512", "rsa-pss", "no-signed-attributes"])
def test_openssl_signature_variants_verify(tmp_path: Path, content: Path, extra: list) -> None:
    pki = make_pki(tmp_path)
    assert verifier(pki).verify(TEXT, sign(pki, content, extra=extra)).common_name == "otad test signer"


def test_signature_without_signed_attributes_still_covers_the_content(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = sign(pki, content, extra=["-noattr"])
    refused(verifier(pki), TEXT + b"\n", sig, "signature does not match sw-description")


@pytest.mark.parametrize("key", ["rsa", "ec256"])
def test_cryptography_pkcs7_builder_signature_verifies(tmp_path: Path, key: str) -> None:
    pki = make_pki(tmp_path, key=key, name=f"k-{key}")
    sig = pkcs7_sign(TEXT, pki)
    assert verifier(pki).verify(TEXT, sig).subject == "CN=otad test signer"
    refused(verifier(pki), TEXT[:-1], sig, "signature does not match sw-description")


def test_signer_under_an_intermediate_in_the_trust_file_verifies(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path, intermediate=True)
    info = verifier(pki).verify(TEXT, sign(pki, content))
    assert info.issuer == "CN=otad test root intermediate"


def test_self_signed_signer_that_is_in_the_trust_file_verifies(tmp_path: Path, content: Path) -> None:
    selfsigned = issue("lonely signer", key="ec256")
    cert, key = signer_files(tmp_path, selfsigned)
    sig = cms_sign(content, tmp_path / "s.sig", signer=(cert, key)).read_bytes()
    assert CmsVerifier(cert.read_bytes()).verify(TEXT, sig).issuer == "CN=lonely signer"
    other = write_pem(tmp_path / "other.pem", issue("lonely signer", key="ec256"))  # same name, other key
    refused(CmsVerifier.from_file(str(other)), TEXT, sig, "does not chain", "self-signed")


def test_embedded_content_is_ignored_and_sw_description_is_what_is_verified(tmp_path: Path, content: Path) -> None:
    # As SWUpdate (CMS_verify with the file as detached content): the given bytes count.
    pki = make_pki(tmp_path)
    sig = sign(pki, content, extra=["-nodetach"])
    assert verifier(pki).verify(TEXT, sig).method == "cms"
    refused(verifier(pki), b"something else\n", sig, "signature does not match sw-description")


def test_every_signer_must_verify_as_with_openssl(tmp_path: Path, content: Path) -> None:
    pki, other = make_pki(tmp_path), make_pki(tmp_path, name="other")
    both = ["-signer", str(other.signer_cert), "-inkey", str(other.signer_key)]
    sig = cms_sign(content, tmp_path / "two.sig", pki, extra=both)
    # SignerInfos are a DER SET OF, sorted by their bytes: which one is #1 varies.
    refused(verifier(pki), TEXT, sig.read_bytes(), " of 2: signer 'CN=otad test signer' does not chain")
    assert not openssl_cms_verify(content, sig, pki.ca_pem)[0]
    write_pem(tmp_path / "both.pem", pki.root, other.root)
    both_roots = CmsVerifier.from_file(str(tmp_path / "both.pem"))
    assert both_roots.verify(TEXT, sig.read_bytes()).issuer == "CN=otad test root"


# --- bad content, bad signer -------------------------------------------------------------------

def test_one_modified_byte_of_content_is_refused(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = sign(pki, content)
    bad = bytearray(TEXT)
    bad[20] ^= 0x01
    refused(verifier(pki), bytes(bad), sig, "signature does not match sw-description", "sha256")


def test_flipped_bit_in_the_signature_value_is_refused(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = bytearray(sign(pki, content))
    sig[-5] ^= 0x40  # inside the RSA signature value, the last field of the SignerInfo
    refused(verifier(pki), TEXT, bytes(sig), "signature does not match sw-description", "did not make it")


def test_signature_from_another_ca_is_refused(tmp_path: Path, content: Path) -> None:
    pki, other = make_pki(tmp_path), make_pki(tmp_path, name="other", root_cn="someone else's root")
    refused(verifier(pki), TEXT, sign(other, content),
            f"signer 'CN=otad test signer' does not chain to a trusted certificate in {pki.ca_pem}",
            "issuer 'CN=someone else's root' is not there")


def test_root_with_the_same_name_but_another_key_is_not_trusted(tmp_path: Path, content: Path) -> None:
    pki, impostor = make_pki(tmp_path), make_pki(tmp_path, name="impostor")  # same names, other keys
    assert impostor.root.subject == pki.root.subject
    sig = sign(impostor, content)
    refused(verifier(pki), TEXT, sig, "does not chain", "has the issuer's name but not the key")
    assert not openssl_cms_verify(content, content.parent / "impostor.sig", pki.ca_pem)[0]


def test_intermediate_carried_only_in_the_cms_is_not_used_unlike_plain_openssl(tmp_path: Path, content: Path) -> None:
    # Rule 6 (CMS_IGNORE_ADDITIONAL_CERTS): the sender must not be able to supply the chain.
    pki = make_pki(tmp_path, intermediate=True, intermediate_trusted=False)
    sig = sign(pki, content)  # -certfile chain.pem puts the intermediate into the CMS
    refused(verifier(pki), TEXT, sig, "does not chain", "only in the signature", "not used to build the chain")
    accepted, _ = openssl_cms_verify(content, content.parent / "pki.sig", pki.ca_pem)
    assert accepted, "plain `openssl cms -verify -CAfile` builds the chain with CMS-carried certificates"


def test_trust_file_with_only_the_intermediate_is_an_anchor_like_openssl_partial_chain(
        tmp_path: Path, content: Path) -> None:
    # Every certificate in the trust file is an anchor (docs 5.1 item 3); OpenSSL needs -partial_chain.
    pki = make_pki(tmp_path, intermediate=True)
    only = write_pem(tmp_path / "intermediate-only.pem", pki.intermediate)  # type: ignore[arg-type]
    sig = sign(pki, content)
    assert CmsVerifier.from_file(str(only)).verify(TEXT, sig).issuer == "CN=otad test root intermediate"
    sig_path = content.parent / "pki.sig"
    assert not openssl_cms_verify(content, sig_path, only)[0]
    assert openssl_cms_verify(content, sig_path, only, extra=["-partial_chain"])[0]


def test_signer_certificate_missing_from_the_cms_is_refused(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    refused(verifier(pki), TEXT, sign(pki, content, extra=["-nocerts"]), "signer certificate", "not included")


def test_sha1_digest_is_refused_although_openssl_accepts_it(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = sign(pki, content, extra=["-md", "sha1"])
    refused(verifier(pki), TEXT, sig, "digest algorithm sha1 is not accepted")
    assert openssl_cms_verify(content, content.parent / "pki.sig", pki.ca_pem)[0]


# --- validity and the clock --------------------------------------------------------------------

def test_expired_signer_is_refused(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path, not_before=now() - 30 * DAY, not_after=now() - DAY)
    day = (now() - DAY).strftime("%Y-%m-%d")
    refused(verifier(pki), TEXT, sign(pki, content), "certificate 'CN=otad test signer' expired on " + day,
            "checked at " + now().strftime("%Y-%m-%d"))


def test_signer_not_yet_valid_is_refused(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path, not_before=now() + 10 * DAY, not_after=now() + 40 * DAY)
    refused(verifier(pki), TEXT, sign(pki, content), "'CN=otad test signer' is not valid before")


def test_expired_root_is_refused_even_with_the_intermediate_trusted(tmp_path: Path, content: Path) -> None:
    root = issue("old root", ca=True, not_before=now() - 90 * DAY, not_after=now() - DAY)
    inter = issue("young intermediate", issuer=root, ca=True)
    leaf = issue("signer", issuer=inter)
    ca = write_pem(tmp_path / "ca.pem", root, inter)
    sig = cms_sign(content, tmp_path / "s.sig", signer=signer_files(tmp_path, leaf))
    refused(CmsVerifier.from_file(str(ca)), TEXT, sig.read_bytes(), "certificate 'CN=old root' expired on")
    assert not openssl_cms_verify(content, sig, ca)[0]


def test_clock_at_1970_uses_the_floor_and_says_so(tmp_path: Path, content: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path)
    with caplog.at_level(logging.WARNING, logger="otad.swu.signature"):
        info = verifier(pki, clock=lambda: 0.0).verify(TEXT, sign(pki, content))
    assert info.clock_untrusted and info.checked_at == FLOOR
    assert any("before the time floor" in r.getMessage() and "1970-01-01" in r.getMessage() for r in caplog.records)


def test_clock_before_floor_still_refuses_a_certificate_expired_before_the_floor(tmp_path: Path,
                                                                              content: Path) -> None:
    pki = make_pki(tmp_path, not_before=FLOOR - 400 * DAY, not_after=FLOOR - 10 * DAY)
    refused(verifier(pki, clock=lambda: 0.0), TEXT, sign(pki, content),
            "expired on " + (FLOOR - 10 * DAY).strftime("%Y-%m-%d"), f"checked at {RELEASE_DATE}", "time floor")


def test_clock_before_floor_accepts_a_certificate_issued_after_the_floor(tmp_path: Path, content: Path) -> None:
    # Below the floor the true time is only known to be later than the floor: notBefore can't be judged.
    pki = make_pki(tmp_path, not_before=FLOOR + 30 * DAY, not_after=FLOOR + 400 * DAY)
    assert verifier(pki, clock=lambda: 0.0).verify(TEXT, sign(pki, content)).clock_untrusted
    refused(verifier(pki, clock=lambda: (FLOOR + DAY).timestamp()), TEXT, sign(pki, content), "is not valid before")


def test_trusted_time_defaults_to_release_date_and_passes_a_good_clock_through() -> None:
    assert FLOOR == datetime.datetime.fromisoformat(RELEASE_DATE).replace(tzinfo=datetime.timezone.utc)
    later = FLOOR + 3 * DAY
    assert TrustedTime().now(lambda: later.timestamp()) == (later, False)
    assert TrustedTime(later).now(lambda: 1e300) == (later, True)  # an absurd clock is not trusted either
    with pytest.raises(ValueError):
        TrustedTime(datetime.datetime(2026, 1, 1))


# --- purpose and signer name -------------------------------------------------------------------

@pytest.mark.parametrize("eku,email_ok,code_ok", [
    ((SERVER_AUTH,), False, False),
    ((CODE_SIGNING,), False, True),
    ((EMAIL,), True, False),
    ((EMAIL, CODE_SIGNING), True, True),
    ((ANY_EKU,), False, False),   # OpenSSL: anyExtendedKeyUsage does not stand in for emailProtection
    (None, True, False),          # no EKU: S/MIME ok; SWUpdate's check_code_sign demands codeSigning in an EKU
], ids=["serverAuth", "codeSigning", "emailProtection", "email+code", "anyEKU", "no-EKU"])
def test_purpose_of_the_signer_certificate(tmp_path: Path, content: Path, eku: object, email_ok: bool,
                                           code_ok: bool) -> None:
    pki = make_pki(tmp_path, eku=eku)  # type: ignore[arg-type]
    sig = sign(pki, content)
    for purpose, ok in (("emailProtection", email_ok), ("codeSigning", code_ok)):
        v = verifier(pki, purpose=purpose)
        if ok:
            assert v.verify(TEXT, sig).method == "cms"
        else:
            refused(v, TEXT, sig, "purpose: certificate 'CN=otad test signer'", purpose)
    assert verifier(pki, purpose="any").verify(TEXT, sig).method == "cms"
    assert openssl_cms_verify(content, content.parent / "pki.sig", pki.ca_pem)[0] == email_ok


def test_purpose_message_names_the_missing_usage(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path, eku=(SERVER_AUTH,))
    refused(verifier(pki), TEXT, sign(pki, content),
            "purpose: certificate 'CN=otad test signer' lacks emailProtection in extendedKeyUsage "
            "(it lists serverAuth)")


@pytest.mark.parametrize("usage,ok", [(("key_encipherment",), False), (("content_commitment",), True), (None, True)],
                         ids=["keyEncipherment-only", "nonRepudiation", "no-keyUsage"])
def test_key_usage_of_the_signer_for_smime_signing(tmp_path: Path, content: Path, usage: object, ok: bool) -> None:
    pki = make_pki(tmp_path, key_usage=usage)  # type: ignore[arg-type]
    sig = sign(pki, content)
    if ok:
        assert verifier(pki).verify(TEXT, sig).method == "cms"
    else:
        refused(verifier(pki), TEXT, sig, "keyUsage allows neither digitalSignature nor nonRepudiation")
    assert verifier(pki, purpose="any").verify(TEXT, sig).method == "cms"
    assert openssl_cms_verify(content, content.parent / "pki.sig", pki.ca_pem)[0] == ok


def test_intermediate_whose_eku_lacks_the_purpose_is_refused(tmp_path: Path, content: Path) -> None:
    root = issue("root", ca=True)
    inter = issue("tls-only intermediate", issuer=root, ca=True, eku=(SERVER_AUTH,))
    ca = write_pem(tmp_path / "ca.pem", root, inter)
    sig = cms_sign(content, tmp_path / "s.sig", signer=signer_files(tmp_path, issue("signer", issuer=inter)))
    refused(CmsVerifier.from_file(str(ca)), TEXT, sig.read_bytes(),
            "purpose: CA certificate 'CN=tls-only intermediate' lacks emailProtection")
    assert CmsVerifier.from_file(str(ca), purpose="any").verify(TEXT, sig.read_bytes()).common_name == "signer"


@pytest.mark.parametrize("bad", ["no-basicConstraints", "ca-false", "no-keyCertSign", "pathlen-0"])
def test_intermediate_that_may_not_issue_is_refused(tmp_path: Path, content: Path, bad: str) -> None:
    root = issue("root", ca=True, pathlen=0 if bad == "pathlen-0" else None)
    inter = issue("intermediate", issuer=root, ca=bad != "ca-false", basic_constraints=bad != "no-basicConstraints",
                  key_usage=("crl_sign",) if bad == "no-keyCertSign" else ("key_cert_sign", "crl_sign"), eku=None)
    ca = write_pem(tmp_path / "ca.pem", root, inter)
    sig = cms_sign(content, tmp_path / "s.sig", signer=signer_files(tmp_path, issue("signer", issuer=inter)))
    message = "allows 0 intermediate CA(s)" if bad == "pathlen-0" else "issuer 'CN=intermediate' is not a CA"
    refused(CmsVerifier.from_file(str(ca), purpose="any"), TEXT, sig.read_bytes(), message)
    assert not openssl_cms_verify(content, sig, ca, purpose="any")[0]


def test_forced_signer_name_must_equal_the_cn_exactly(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = sign(pki, content)
    assert verifier(pki, forced_signer_name="otad test signer").verify(TEXT, sig).common_name == "otad test signer"
    refused(verifier(pki, forced_signer_name="otad test"), TEXT, sig,
            "signer CN 'otad test signer' is not the required 'otad test'")
    refused(verifier(pki, forced_signer_name="OTAD TEST SIGNER"), TEXT, sig, "is not the required")
    assert verifier(pki, forced_signer_name="").verify(TEXT, sig).method == "cms"  # empty: no check (SWUpdate)


# --- malformed signatures ----------------------------------------------------------------------

def test_pem_signature_is_refused_with_a_hint(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sign(pki, content)
    refused(verifier(pki), TEXT, der_to_pem(content.parent / "pki.sig"), "sw-description.sig:",
            "not DER CMS SignedData (PEM?)")


@pytest.mark.parametrize("sig,part", [
    (b"", "empty"),
    (b"\x00" * 64, "not DER CMS SignedData"),
    (b"hello, this is not a signature\n", "not DER CMS SignedData"),
    (b"\x30\x82\xff\xff\x06\x09", "not DER CMS SignedData"),
    (b"\x30\x03\x02\x01\x00", "not DER CMS SignedData"),
], ids=["empty", "zeros", "text", "huge-length", "wrong-structure"])
def test_garbage_signatures_are_refused(tmp_path: Path, sig: bytes, part: str) -> None:
    refused(verifier(make_pki(tmp_path)), TEXT, sig, part)


def test_truncated_and_extended_der_are_refused(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = sign(pki, content)
    for bad in (sig[:-1], sig[: len(sig) // 2], sig[:10], sig + b"\x00"):
        refused(verifier(pki), TEXT, bad, "not DER CMS SignedData")


def test_signature_made_without_binary_is_refused_for_text_with_newlines(tmp_path: Path, content: Path) -> None:
    # Without -binary openssl signs the S/MIME canonical text (LF -> CRLF), not these bytes.
    pki = make_pki(tmp_path)
    sig = sign(pki, content, binary=False)
    refused(verifier(pki), TEXT, sig, "signature does not match sw-description", "messageDigest")
    assert verifier(pki).verify(TEXT.replace(b"\n", b"\r\n"), sig).method == "cms"


def test_signed_data_whose_content_type_is_not_data_is_refused(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = sign(pki, content, extra=["-econtent_type", "1.2.3.4"])
    refused(verifier(pki), TEXT, sig, "signed content type is 1.2.3.4, expected data")


def test_fields_nothing_else_reads_are_still_checked_like_openssl(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    sig = sign(pki, content)
    sha256_oid = bytes.fromhex("0609608648016503040201")
    first = sig.index(sha256_oid)  # SignedData.digestAlgorithms comes before the SignerInfo
    sha384_only = sig[:first + 10] + b"\x02" + sig[first + 11:]
    refused(verifier(pki), TEXT, sha384_only, "sha256 of the signer is not listed in SignedData.digestAlgorithms")
    (tmp_path / "bad.sig").write_bytes(sha384_only)
    assert not openssl_cms_verify(content, tmp_path / "bad.sig", pki.ca_pem)[0]
    signer_info = asn1_cms.ContentInfo.load(sig)["content"]["signer_infos"][0]
    version = sig.index(signer_info.dump()) + len(signer_info.dump()) - len(signer_info.contents)
    assert sig[version:version + 3] == b"\x02\x01\x01"
    bad_tag = sig[:version] + b"\x04" + sig[version + 1:]  # SignerInfo.version as OCTET STRING
    refused(verifier(pki), TEXT, bad_tag, "not DER CMS SignedData", "CMSVersion")


# --- trust file --------------------------------------------------------------------------------

def test_trust_file_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SignatureError, match=f"{tmp_path}/missing.pem: cannot read"):
        CmsVerifier.from_file(str(tmp_path / "missing.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    with pytest.raises(SignatureError, match=f"{empty}: no PEM certificate"):
        CmsVerifier.from_file(str(empty))
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(SignatureError, match="certificate #1 cannot be parsed"):
        CmsVerifier.from_file(str(broken))
    with pytest.raises(ConfigError, match="certificate purpose 'smimesign'"):
        CmsVerifier(b"", purpose="smimesign")


def test_other_public_pem_blocks_in_the_trust_file_are_skipped(tmp_path: Path, content: Path) -> None:
    pki = make_pki(tmp_path)
    keys = rsa_keypair(tmp_path / "raw")
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(keys.pub.read_bytes() + b"junk between blocks\n" + pki.ca_pem.read_bytes())
    assert CmsVerifier.from_file(str(mixed)).verify(TEXT, sign(pki, content)).method == "cms"


@pytest.mark.parametrize("label", ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"])
@pytest.mark.parametrize("method", ["cms", "rsa"])
def test_a_trust_file_holding_a_private_key_is_refused(tmp_path: Path, label: str, method: str) -> None:
    pki = make_pki(tmp_path)
    keys = rsa_keypair(tmp_path / "raw")
    body = pki.signer_key.read_bytes().replace(b"PRIVATE KEY", label.encode())
    trust = tmp_path / "trust.pem"
    trust.write_bytes((pki.ca_pem if method == "cms" else keys.pub).read_bytes() + body)
    verifier = CmsVerifier if method == "cms" else RsaVerifier
    with pytest.raises(SignatureError, match=f"{trust}: holds a private key \\(-----BEGIN {label}-----\\)"):
        verifier.from_file(str(trust))


def test_a_bare_public_key_for_cms_says_to_use_signature_rsa(tmp_path: Path) -> None:
    keys = rsa_keypair(tmp_path)
    with pytest.raises(SignatureError, match="holds a bare public key, no certificate: .* use --signature rsa"):
        CmsVerifier.from_file(str(keys.pub))


def test_certificates_for_raw_rsa_say_to_use_signature_cms(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(SignatureError, match="holds certificates, not a public key: .*--signature cms"):
        RsaVerifier.from_file(str(pki.ca_pem))


# --- raw RSA -----------------------------------------------------------------------------------

@pytest.mark.parametrize("saltlen", [None, "digest", "max", "auto", "0", "20"],
                         ids=["pkcs1v15", "pss-digest", "pss-max", "pss-auto", "pss-0", "pss-20"])
def test_raw_rsa_signatures_from_openssl_dgst_verify(tmp_path: Path, content: Path, saltlen: Optional[str]) -> None:
    keys = rsa_keypair(tmp_path)
    sig = rsa_sign(content, tmp_path / "s.sig", keys.key, pss_saltlen=saltlen).read_bytes()
    info = RsaVerifier.from_file(str(keys.pub)).verify(TEXT, sig)
    assert (info.method, info.subject, info.not_after) == ("rsa", "", None)


def test_raw_rsa_3072_verifies_and_refuses_other_bytes(tmp_path: Path, content: Path) -> None:
    keys = rsa_keypair(tmp_path, bits=3072, name="big")
    sig = rsa_sign(content, tmp_path / "s.sig", keys.key).read_bytes()
    assert len(sig) == 384
    v = RsaVerifier.from_file(str(keys.pub))
    assert v.verify(TEXT, sig).method == "rsa"
    refused(v, TEXT + b" ", sig, "signature does not match sw-description", "RSA-3072", str(keys.pub))


def test_raw_rsa_signature_from_another_key_is_refused(tmp_path: Path, content: Path) -> None:
    mine, theirs = rsa_keypair(tmp_path, name="mine"), rsa_keypair(tmp_path, name="theirs")
    sig = rsa_sign(content, tmp_path / "s.sig", theirs.key, pss_saltlen="digest").read_bytes()
    refused(RsaVerifier.from_file(str(mine.pub)), TEXT, sig, "signature does not match sw-description")


def test_cms_signature_given_to_the_rsa_verifier_is_refused_and_vice_versa(tmp_path: Path, content: Path) -> None:
    pki, keys = make_pki(tmp_path), rsa_keypair(tmp_path)
    refused(RsaVerifier.from_file(str(keys.pub)), TEXT, sign(pki, content), "not a raw RSA-2048 signature",
            "looks like CMS")
    raw = rsa_sign(content, tmp_path / "raw.sig", keys.key).read_bytes()
    refused(verifier(pki), TEXT, raw, "not DER CMS SignedData")


def test_rsa_verifier_needs_an_rsa_public_key(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, key="ec256", name="ec")
    with pytest.raises(SignatureError, match="holds certificates, not a public key"):
        RsaVerifier.from_file(str(pki.signer_cert))
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not pem at all\n")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        RsaVerifier.from_file(str(garbage))
    ec_pub = tmp_path / "ec.pub.pem"
    ec_pub.write_bytes(pki.signer.cert.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SignatureError, match="need an RSA public key"):
        RsaVerifier.from_file(str(ec_pub))
    with pytest.raises(SignatureError, match=f"{tmp_path}/nope.pem: cannot read"):
        RsaVerifier.from_file(str(tmp_path / "nope.pem"))


# --- agreement with `openssl cms -verify` where rule 6 does not apply --------------------------

Case = Callable[[Path, Path], Tuple[Path, Path]]  # (tmp dir, content) -> (signature, trust file)


def _pki_case(**kw: object) -> Case:
    def build(tmp: Path, content: Path) -> Tuple[Path, Path]:
        args = dict(kw)
        extra = args.pop("extra", ())
        pki = make_pki(tmp, **args)  # type: ignore[arg-type]
        return cms_sign(content, tmp / "s.sig", pki, extra=extra), pki.ca_pem  # type: ignore[arg-type]
    return build


def _foreign(tmp: Path, content: Path) -> Tuple[Path, Path]:
    mine, theirs = make_pki(tmp), make_pki(tmp, name="theirs")
    return cms_sign(content, tmp / "s.sig", theirs), mine.ca_pem


def _impostor(tmp: Path, content: Path) -> Tuple[Path, Path]:
    mine, impostor = make_pki(tmp), make_pki(tmp, name="impostor")
    return cms_sign(content, tmp / "s.sig", impostor), mine.ca_pem


def _tampered(tmp: Path, content: Path) -> Tuple[Path, Path]:
    pki = make_pki(tmp)
    sig = cms_sign(content, tmp / "s.sig", pki)
    content.write_bytes(TEXT.replace(b"1.0.0", b"1.0.1"))
    return sig, pki.ca_pem


def _no_binary(tmp: Path, content: Path) -> Tuple[Path, Path]:
    pki = make_pki(tmp)
    return cms_sign(content, tmp / "s.sig", pki, binary=False), pki.ca_pem


def _self_signed(tmp: Path, content: Path) -> Tuple[Path, Path]:
    cert, key = signer_files(tmp, issue("self", key="ec256"))
    return cms_sign(content, tmp / "s.sig", signer=(cert, key)), cert


ORACLE_CASES: Dict[str, Tuple[Case, bool]] = {
    "rsa-root-leaf": (_pki_case(), True),
    "ecdsa-p256": (_pki_case(key="ec256", name="ec"), True),
    "intermediate-trusted": (_pki_case(intermediate=True), True),
    "no-eku": (_pki_case(eku=None), True),
    "no-signed-attributes": (_pki_case(extra=["-noattr"]), True),
    "self-signed-in-trust-file": (_self_signed, True),
    "tampered-content": (_tampered, False),
    "other-ca": (_foreign, False),
    "same-name-other-key-root": (_impostor, False),
    "expired": (_pki_case(not_before=now() - 30 * DAY, not_after=now() - DAY), False),
    "not-yet-valid": (_pki_case(not_before=now() + DAY, not_after=now() + 30 * DAY), False),
    "server-auth-only": (_pki_case(eku=(SERVER_AUTH,)), False),
    "any-eku-only": (_pki_case(eku=(ANY_EKU,)), False),
    "key-encipherment-only": (_pki_case(key_usage=("key_encipherment",)), False),
    "without-binary": (_no_binary, False),
}


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_otad_agrees_with_openssl_cms_verify(tmp_path: Path, content: Path, name: str) -> None:
    build, expected = ORACLE_CASES[name]
    sig, ca = build(tmp_path, content)
    openssl_ok, stderr = openssl_cms_verify(content, sig, ca)
    try:
        CmsVerifier.from_file(str(ca)).verify(content.read_bytes(), sig.read_bytes())
        otad_ok, why = True, ""
    except SignatureError as exc:
        otad_ok, why = False, str(exc)
    assert (otad_ok, openssl_ok) == (expected, expected), f"otad: {why!r}; openssl: {stderr!r}"


# --- no input escapes as a foreign exception ---------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Tuple[CmsVerifier, RsaVerifier, bytes]:
    tmp = tmp_path_factory.mktemp("fuzz")
    pki = make_pki(tmp, key="ec256", name="fuzz", intermediate=True)
    content = tmp / "sw-description"
    content.write_bytes(TEXT)
    sig = cms_sign(content, tmp / "s.sig", pki).read_bytes()
    return verifier(pki), RsaVerifier.from_file(str(rsa_keypair(tmp).pub)), sig


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.one_of(st.binary(max_size=600), st.binary(min_size=256, max_size=256),
                      st.binary(max_size=300).map(lambda b: b"\x30\x82" + b)))
def test_random_bytes_only_ever_raise_signature_error(fuzz_target: Tuple[CmsVerifier, RsaVerifier, bytes],
                                                      junk: bytes) -> None:
    cms, raw, _ = fuzz_target
    for v in (cms, raw):
        with pytest.raises(SignatureError):
            v.verify(TEXT, junk)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_signature_only_ever_raises_signature_error(
        fuzz_target: Tuple[CmsVerifier, RsaVerifier, bytes], data: st.DataObject) -> None:
    cms, _, sig = fuzz_target
    bad = bytearray(sig)
    for _ in range(data.draw(st.integers(1, 4))):
        bad[data.draw(st.integers(0, len(bad) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(bad) // 2, len(bad)))
    try:
        cms.verify(TEXT, bytes(bad[:cut]))
    except SignatureError:
        pass  # a byte may land in a field nothing checks (SignedData.digestAlgorithms) and still verify
