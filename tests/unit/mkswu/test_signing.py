"""otad.mkswu.signing: swugenerator's -k forms; CMS (detached SHA-256, no S/MIME capabilities,
the chain carried, RSA or EC signer) and raw RSA signatures that otad verifies."""

from __future__ import annotations

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization

from otad.swu.signature import CmsVerifier, RsaVerifier
from tests.pki import make_pki, rsa_keypair
from tests.unit.mkswu.helpers import IMAGE, built, cms, image, install, member, template


def test_rsa_signed_bundle_verifies_and_installs(tmp_path, device, pki, capsys) -> None:
    keys = rsa_keypair(tmp_path / "keys")
    bundle = built(tmp_path, template(image(attrs='compressed = "zlib";')), {"rootfs.img": IMAGE},
                   "-k", f"RSA,{keys.key}", capsys=capsys)
    sig = member(bundle, "sw-description.sig")
    assert len(sig) == 256
    assert RsaVerifier.from_file(str(keys.pub)).verify(member(bundle, "sw-description"), sig).method == "rsa"
    rc, _, err = install(device, pki, bundle, capsys, "--signature", "rsa", "-k", keys.pub)
    assert rc == 0, err
    assert device.slot_bytes()[:len(IMAGE)] == IMAGE


def test_cms_signature_is_detached_sha256_without_smime_capabilities_and_carries_the_chain(tmp_path, capsys) -> None:
    chained = make_pki(tmp_path, name="chained", intermediate=True)
    spec = f"CMS,{chained.signer_key},{chained.signer_cert},{chained.chain_pem}"
    bundle = built(tmp_path, template(image()), {"rootfs.img": b"data"}, "-k", spec, capsys=capsys)
    desc, sig = member(bundle, "sw-description"), member(bundle, "sw-description.sig")
    CmsVerifier.from_file(str(chained.ca_pem)).verify(desc, sig)
    signed = asn1_cms.ContentInfo.load(sig)["content"]
    assert signed["encap_content_info"]["content"].native is None  # detached
    assert [a["algorithm"].native for a in signed["digest_algorithms"]] == ["sha256"]
    subjects = {c.chosen.subject.native["common_name"] for c in signed["certificates"]}
    assert subjects == {"otad test signer", "otad test root intermediate"}
    attrs = {a["type"].native for a in signed["signer_infos"][0]["signed_attrs"]}
    assert "smime_capabilities" not in attrs and {"content_type", "message_digest"} <= attrs


@pytest.mark.parametrize("fields", ["pass,chain", "pass", ",chain", "chain"])
def test_swugenerator_password_file_and_chain_fields_are_accepted(tmp_path, capsys, fields) -> None:
    chained = make_pki(tmp_path, name="chained", intermediate=True)
    key = serialization.load_pem_private_key(chained.signer_key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"s3cret")))
    (tmp_path / "pass").write_text("s3cret\nignored second line\n")
    files = {"pass": tmp_path / "pass", "chain": chained.chain_pem, "": ""}
    key = locked if "pass" in fields else chained.signer_key
    spec = ",".join(["CMS", str(key), str(chained.signer_cert)] + [str(files[f]) for f in fields.split(",")])
    bundle = built(tmp_path, template(image()), {"rootfs.img": b"data"}, "-k", spec, capsys=capsys)
    sig = member(bundle, "sw-description.sig")
    CmsVerifier.from_file(str(chained.ca_pem)).verify(member(bundle, "sw-description"), sig)
    carried = len(asn1_cms.ContentInfo.load(sig)["content"]["certificates"])
    assert carried == (2 if "chain" in fields else 1)


def test_ec_signer_works_for_cms(tmp_path, capsys) -> None:
    ec_pki = make_pki(tmp_path, name="ec", key="ec256")
    bundle = built(tmp_path, template(image()), {"rootfs.img": b"data"}, "-k", cms(ec_pki), capsys=capsys)
    CmsVerifier.from_file(str(ec_pki.ca_pem)).verify(member(bundle, "sw-description"),
                                                     member(bundle, "sw-description.sig"))
