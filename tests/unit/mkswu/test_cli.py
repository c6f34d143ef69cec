"""otad.mkswu.cli: the summary it prints, one clear error line and no output for every bad input,
the sub-command and scripts/mkswu ways in, and an import that stays cheap for otad's command line."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Dict, Sequence, Tuple

import pytest
from cryptography.hazmat.primitives import serialization

from otad.errors import ConfigError
from otad.mkswu import cli as mkswu
from tests.pki import Pki, make_pki, write_key
from tests.unit.mkswu.helpers import IMAGE, REPO, cms, image, make, member, template


def test_summary_names_each_member_and_the_signer(tmp_path, pki, capsys) -> None:
    rc, out, err, bundle = make(tmp_path, template(image(attrs='compressed = "zstd";')), {"rootfs.img": IMAGE},
                                "-k", cms(pki), capsys=capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    sha = hashlib.sha256(member(bundle, "rootfs.img.zstd")).hexdigest()
    assert lines[0].startswith("rootfs.img.zstd: ") and f"sha256 {sha}" in lines[0] and "zstd)" in lines[0]
    assert lines[1].startswith(f"{bundle}: 1 artifact(s), ") and "signed (CMS, signer CN=otad test signer)" in lines[1]


def _bad_template(text: str) -> Tuple[str, Dict[str, bytes], Sequence[str]]:
    return text, {"rootfs.img": b"x"}, ()


def _key_file(tmp_path: Path, content: str) -> str:
    (tmp_path / "bad.key").write_text(content)
    return str(tmp_path / "bad.key")


def _mismatched_cms(tmp_path: Path, pki: Pki) -> str:
    other = make_pki(tmp_path, name="other")
    return f"CMS,{other.signer_key},{pki.signer_cert}"


def _locked_key(tmp_path: Path, pki: Pki) -> str:
    key = serialization.load_pem_private_key(pki.signer_key.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"pw")))
    return f"CMS,{locked},{pki.signer_cert}"


def _ec_rsa(tmp_path: Path, pki: Pki) -> str:
    from tests.pki import new_key

    return f"RSA,{write_key(tmp_path / 'ec.key', new_key('ec256'))}"


GOOD = template(image(attrs='compressed = "zstd";'))

BAD = {
    # case: (template, extra args as a function of (tmp_path, pki), fragments of the one error line)
    "missing artifact": (template(image(), image("nope.img")), lambda t, p: [],
                         ["sw-description.in:6:", "'nope.img' not found in", "/art"]),
    "malformed template": ('software = {\n  version = "1";\n  images = ( { filename = ; } );\n};\n',
                           lambda t, p: [], ["sw-description.in:3:", "syntax error"]),
    "no software root": ('version = "1";\n', lambda t, p: [], ["no root group 'software'"]),
    "unknown compression": (template(image(attrs='compressed = "xz";')), lambda t, p: [],
                            ["sw-description.in:5:", "software.images[0] 'rootfs.img'", "unknown compression 'xz'"]),
    "encryption without key": (template(image(attrs="encrypted = true;")), lambda t, p: [],
                               ["sw-description.in:5:", "no AES key was given (-K FILE)"]),
    "encrypted not a boolean": (template(image(attrs='encrypted = "yes";')), lambda t, p: [],
                                ["encrypted: expected true or false, got 'yes'"]),
    "key file: short key": (GOOD, lambda t, p: ["-K", _key_file(t, "abcd " + "00" * 16)],
                            ["bad.key:1:", "key: expected 32 or 48 or 64 hex digits, got 4 characters"]),
    "key file: not hex": (GOOD, lambda t, p: ["-K", _key_file(t, "zz" * 32 + " " + "00" * 16)],
                          ["bad.key:1:", "key: expected hex digits only"]),
    "key file: no iv": (GOOD, lambda t, p: ["-K", _key_file(t, "00" * 32)],
                        ["bad.key:1:", "'<hex key> <hex iv>'", "got 1 word(s)"]),
    "key file: bad iv": (GOOD, lambda t, p: ["-K", _key_file(t, "00" * 32 + " 1234")], ["iv: expected 32 hex"]),
    "key file: unknown line": (GOOD, lambda t, p: ["-K", _key_file(t, "key=" + "00" * 32 + "\npassword=x\n")],
                               ["bad.key:2:", "got a line starting 'password'"]),
    "key file: missing": (GOOD, lambda t, p: ["-K", str(t / "none.key")],
                          ["none.key: cannot read the AES key file: No such file or directory"]),
    "filename with a slash": (template(image("sub/rootfs.img")), lambda t, p: [],
                              ["sw-description.in:5:", "expected a flat file name"]),
    "filename sw-description": (template(image("sw-description")), lambda t, p: [],
                                ["reserved for the bundle's own members"]),
    "two files, one member name": (template(image(attrs='compressed = "zstd";'), image("rootfs.img.zstd")),
                                   lambda t, p: [], ["member 'rootfs.img.zstd' would be both"]),
    "undefined variable": (template(image(device="@@SLOT@@")), lambda t, p: [],
                           ["sw-description.in:5:", "@@SLOT@@ is not defined"]),
    "sign: unknown method": (GOOD, lambda t, p: ["-k", "GPG,key"], ["-k 'GPG,key': expected CMS,KEY,CERT"]),
    "sign: PKCS11": (GOOD, lambda t, p: ["-k", "PKCS11,1234"], ["PKCS11", "not supported by mkswu"]),
    "sign: key of another certificate": (GOOD, lambda t, p: ["-k", _mismatched_cms(t, p)],
                                         ["does not belong to the certificate 'CN=otad test signer'"]),
    "sign: encrypted key without password": (GOOD, lambda t, p: ["-k", _locked_key(t, p)],
                                             ["locked.key: the private key is encrypted: give a password file"]),
    "sign: certificate file is not one": (GOOD, lambda t, p: ["-k", f"CMS,{p.signer_key},{p.signer_key}"],
                                          ["signer.key: not a PEM certificate"]),
    "sign: RSA with an EC key": (GOOD, lambda t, p: ["-k", _ec_rsa(t, p)],
                                 ["ec.key: raw signatures need an RSA key"]),
    "output directory missing": (GOOD, lambda t, p: ["-o", str(t / "nowhere" / "x.swu")],
                                 ["cannot create a staging directory next to the output"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line_and_no_output(tmp_path, pki, capsys, case) -> None:
    text, extra, fragments = BAD[case]
    rc, out, err, bundle = make(tmp_path, text, {"rootfs.img": b"x", "rootfs.img.zstd": b"y"},
                                *extra(tmp_path, pki), capsys=capsys)
    assert rc == 2, err
    assert "Traceback" not in err and out == ""
    [line] = err.splitlines()
    assert line.startswith("mkswu: error: ")
    for fragment in fragments:
        assert fragment in line
    assert list(bundle.parent.iterdir()) == []


def test_template_that_is_not_utf8_names_the_line(tmp_path, capsys) -> None:
    (tmp_path / "t.in").write_bytes(b'software = {\n  version = "\xff";\n};\n')
    rc = mkswu.main(["-s", str(tmp_path / "t.in"), "-o", str(tmp_path / "x.swu")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"mkswu: error: {tmp_path / 't.in'}:2: not valid UTF-8: byte 0xff\n"
    assert not (tmp_path / "x.swu").exists()


def test_add_arguments_and_run_work_as_a_sub_command(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="otad")
    parser.add_argument("--config")
    sub = parser.add_subparsers(dest="command")
    mkswu.add_arguments(sub.add_parser("mkswu"))
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "rootfs.img").write_bytes(b"data")
    (tmp_path / "t.in").write_text(template(image()))
    args = parser.parse_args(["--config", "otad.conf", "mkswu", "-s", str(tmp_path / "t.in"), "-a",
                              str(tmp_path / "art"), "-o", str(tmp_path / "x.swu"), "--format", "newc"])
    assert args.config == "otad.conf"  # mkswu's -c/--config does not clobber otad's
    assert mkswu.run(args) == 0
    assert (tmp_path / "x.swu").read_bytes()[:6] == b"070701"
    args = parser.parse_args(["mkswu", "-s", str(tmp_path / "none.in"), "-o", str(tmp_path / "y.swu")])
    with pytest.raises(ConfigError, match="none.in: cannot read template"):
        mkswu.run(args)


def test_scripts_mkswu_builds_a_bundle(tmp_path, pki) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "rootfs.img").write_bytes(IMAGE)
    (tmp_path / "t.in").write_text(template(image(attrs='compressed = "zlib";')))
    proc = subprocess.run([str(REPO / "scripts" / "mkswu"), "-s", "t.in", "-a", "art", "-o", "b.swu",
                           "-k", cms(pki)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rootfs.img.zlib" in proc.stdout
    proc = subprocess.run([str(REPO / "scripts" / "mkswu"), "-s", "t.in", "-o", "c.swu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("mkswu: error: t.in:5:")


def test_importing_mkswu_stays_cheap_for_the_cli_parser() -> None:
    """cli.py builds every sub-command's parser on each run; the heavy libraries load on first use."""
    code = ("import sys, otad.mkswu.cli; print(sorted(m for m in ('cryptography', 'zstandard', 'libconf', "
            "'otad.swu.cpio', 'otad.libconfig') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
