"""mkswu's delta images: the .zck of each `type = "delta"` image in the `compatible` or `fine`
profile, its header as the entry's member, and the three layouts — self-contained (the body as
the last member and a MODE-full selection otad installs), artifact and url (the .zck beside
the bundle). libzck's own tools judge the chunk files; otad installs the full selection."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import pytest

from otad.delta import libzck, zck
from otad.mkswu import delta
from otad.mkswu.delta import parse_profile
from tests.unit.mkswu.helpers import SLOT_A, SLOT_B, built, cms, install, make, member, members, tree

needs_libzck = pytest.mark.skipif(not libzck.available(), reason="libzck1 not installed")

_rng = random.Random(7)
IMAGE = _rng.randbytes(300_000) + bytes(500_000) + _rng.randbytes(250_000) + b"tail" * 1000


def entry(device: str, source: str, props: str = "", attrs: str = "", filename: str = "rootfs.ext4") -> str:
    return (f'{{ filename = "{filename}"; type = "delta"; device = "{device}"; {attrs}\n'
            f'          properties = {{ chain = "raw"; source = "{source}"; {props} }}; }}')


def ab(props: str = "", attrs: str = "", extra: str = "") -> str:
    """An A/B template: stable,copy1 writes slot a from b, stable,copy2 slot b from a."""
    return ('software = {\n  version = "2.0.1";\n  hardware-compatibility = [ "1.0" ];\n  stable = {\n'
            f'    copy1 = {{ images = ( {entry(SLOT_A, SLOT_B, props, attrs)} ); }};\n'
            f'    copy2 = {{ images = ( {entry(SLOT_B, SLOT_A, props, attrs)} );\n'
            f'              files = ( {{ filename = "app.conf"; path = "/etc/app.conf"; }} ); }};\n'
            f'{extra}  }};\n}};\n')


ARTIFACTS = {"rootfs.ext4": IMAGE, "app.conf": b"a=1\n"}


def parts(bundle: Path, body_name: str = "rootfs.ext4.zckbody") -> Tuple[zck.ZckHeader, bytes]:
    header_bytes = member(bundle, "rootfs.ext4")
    return zck.parse_header(header_bytes), header_bytes + member(bundle, body_name)


def judged_by_libzck(path: Path, image: bytes) -> None:
    """`zck_read_header -f` checks the whole file; `unzck` decodes it to the image."""
    check = subprocess.run(["zck_read_header", "-f", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    out = subprocess.run(["unzck", "-c", str(path)], capture_output=True, check=True).stdout
    assert out == image


@pytest.mark.parametrize("profile", ["compatible", "fine", "fine:8"])
def test_self_contained_bundle_carries_header_and_body_and_a_full_mode(tmp_path, pki, capsys, profile) -> None:
    bundle = built(tmp_path, ab(), ARTIFACTS, "-k", cms(pki), "--delta", profile, capsys=capsys)
    names = [n for n, _, _ in members(bundle)]
    assert names == ["sw-description", "sw-description.sig", "rootfs.ext4", "app.conf", "rootfs.ext4.zckbody"]
    header, whole = parts(bundle)
    (tmp_path / "joined.zck").write_bytes(whole)
    judged_by_libzck(tmp_path / "joined.zck", IMAGE)
    zck.check_delta_usable(header)
    assert len(member(bundle, "rootfs.ext4.zckbody")) == header.index.data_length
    if profile.startswith("fine"):
        size = parse_profile(profile).chunk_bytes
        assert header.index.uniform_length() == size and all(o % size == 0 for o in header.index.offsets)
    else:
        assert header.index.uniform_length() is None
    stable = tree(bundle)["software"]["stable"]
    for mode, device, source in (("copy1", SLOT_A, SLOT_B), ("copy2", SLOT_B, SLOT_A)):
        e = stable[mode]["images"][0]
        assert e["sha256"] == header.sha256 and e["type"] == "delta" and e["device"] == device
        assert e["properties"] == {"chain": "raw", "source": source, "url": "dynamic",
                                   "zckfile": "rootfs.ext4.zckbody",
                                   "image-sha256": hashlib.sha256(IMAGE).hexdigest()}
        full = stable[f"{mode}-full"]["images"]
        assert full == [{"device": device, "filename": "rootfs.ext4.zckbody", "type": "raw", "compressed": "zstd",
                         "installed-directly": True,
                         "sha256": hashlib.sha256(member(bundle, "rootfs.ext4.zckbody")).hexdigest()}]
    assert stable["copy2-full"]["files"] == stable["copy2"]["files"]
    assert "copy1-full" not in stable["copy1"] and sorted(os.listdir(bundle.parent)) == ["update.swu"]


@needs_libzck
def test_compatible_is_byte_for_byte_what_the_zck_tool_writes(tmp_path, capsys) -> None:
    bundle = built(tmp_path, ab(), ARTIFACTS, "--delta", "compatible", capsys=capsys)
    (tmp_path / "rootfs.ext4").write_bytes(IMAGE)
    subprocess.run(["zck", "-u", "-h", "sha256", "-o", str(tmp_path / "ref.zck"), str(tmp_path / "rootfs.ext4")],
                   check=True, capture_output=True)
    assert parts(bundle)[1] == (tmp_path / "ref.zck").read_bytes()


def test_without_libzck_the_python_writer_cuts_the_same_chunks(tmp_path, capsys, monkeypatch) -> None:
    expected = {}
    for profile in ("compatible", "fine"):
        bundle = built(tmp_path, ab(), ARTIFACTS, "--delta", profile, capsys=capsys)
        expected[profile] = parts(bundle)[0].index
    monkeypatch.setattr(libzck, "available", lambda: False)
    for profile in ("compatible", "fine"):
        bundle = built(tmp_path, ab(), ARTIFACTS, "--delta", profile, capsys=capsys)
        header, whole = parts(bundle)
        (tmp_path / "py.zck").write_bytes(whole)
        judged_by_libzck(tmp_path / "py.zck", IMAGE)
        assert list(header.index.lengths) == list(expected[profile].lengths)
        assert header.index.digests_uncompressed == expected[profile].digests_uncompressed


def test_otad_installs_the_full_mode_of_a_self_contained_bundle(tmp_path, device, pki, capsys) -> None:
    bundle = built(tmp_path, ab(), ARTIFACTS, "-k", cms(pki), "--delta", "fine", capsys=capsys)
    rc, _, err = install(device, pki, bundle, capsys, "-e", "stable,copy1-full", "-H", "other:1.0")
    assert rc == 0, err
    assert device.slot_bytes(SLOT_A.rsplit("/", 1)[1])[:len(IMAGE)] == IMAGE
    assert device.untouched(SLOT_B.rsplit("/", 1)[1])


def test_artifact_layout_writes_the_zck_beside_the_bundle(tmp_path, capsys) -> None:
    bundle = built(tmp_path, ab(), ARTIFACTS, "--delta", "fine:32", "--delta-layout", "artifact", capsys=capsys)
    assert [n for n, _, _ in members(bundle)] == ["sw-description", "rootfs.ext4", "app.conf"]
    zck_file = bundle.parent / "rootfs.ext4.zck"
    assert sorted(os.listdir(bundle.parent)) == ["rootfs.ext4.zck", "update.swu"]
    judged_by_libzck(zck_file, IMAGE)
    header = zck.parse_header(member(bundle, "rootfs.ext4"))
    assert zck_file.read_bytes()[:header.length] == member(bundle, "rootfs.ext4")
    stable = tree(bundle)["software"]["stable"]
    assert set(stable) == {"copy1", "copy2"}
    props = stable["copy2"]["images"][0]["properties"]
    assert (props["url"], props["zckfile"]) == ("dynamic", "rootfs.ext4.zck")


def test_url_layout_keeps_the_url_and_names_the_file_after_it(tmp_path, capsys) -> None:
    url = "https://cdn.example.com/fleet/2.0.1/rootfs-2.0.1.ext4.zck?sig=1"
    bundle = built(tmp_path, ab(f'url = "{url}";'), ARTIFACTS, "--delta-layout", "url", capsys=capsys)
    assert sorted(os.listdir(bundle.parent)) == ["rootfs-2.0.1.ext4.zck", "update.swu"]
    judged_by_libzck(bundle.parent / "rootfs-2.0.1.ext4.zck", IMAGE)
    props = tree(bundle)["software"]["stable"]["copy1"]["images"][0]["properties"]
    assert props["url"] == url and "zckfile" not in props
    assert capsys.readouterr().out == ""  # built() read it: the upload line was printed then


def test_the_upload_line_names_the_zck_file(tmp_path, capsys) -> None:
    rc, out, err, bundle = make(tmp_path, ab(), ARTIFACTS, "--delta-layout", "artifact", capsys=capsys)
    assert rc == 0, err
    assert f"{bundle.parent / 'rootfs.ext4.zck'}: " in out and "upload it with the bundle" in out
    assert "zchunk header of rootfs.ext4, compatible," in out


def test_a_template_zckfile_is_kept_and_a_board_section_works(tmp_path, capsys) -> None:
    image = entry(SLOT_B, SLOT_A, 'zckfile = "chunks.bin";')
    text = ('software = { version = "1"; rpi0w = { hardware-compatibility = [ "1.0" ]; stable = {\n'
            f'  copy2 = {{ images = ( {image} ); }}; }}; }}; }};\n')
    bundle = built(tmp_path, text, ARTIFACTS, capsys=capsys)
    assert [n for n, _, _ in members(bundle)] == ["sw-description", "rootfs.ext4", "chunks.bin"]
    stable = tree(bundle)["software"]["rpi0w"]["stable"]
    assert stable["copy2-full"]["images"][0]["filename"] == "chunks.bin"


def test_other_properties_and_settings_of_the_entry_reach_the_full_mode(tmp_path, capsys) -> None:
    text = ab('max-ranges = "50"; note = "kept";', attrs='offset = "1M";')
    bundle = built(tmp_path, text, ARTIFACTS, "--delta", "fine", capsys=capsys)
    full = tree(bundle)["software"]["stable"]["copy2-full"]["images"][0]
    assert full["offset"] == "1M" and full["properties"] == {"note": "kept"}


def test_two_delta_images_put_both_bodies_after_every_other_member(tmp_path, capsys) -> None:
    text = ('software = { version = "1"; stable = { copy2 = { images = (\n'
            f'  {entry(SLOT_B, SLOT_A)},\n  {{ filename = "boot.img"; device = "/dev/mmcblk0p1"; }},\n'
            f'  {entry("/dev/mmcblk0p4", "/dev/mmcblk0p5", filename="data.img")} ); }}; }}; }};\n')
    bundle = built(tmp_path, text, {**ARTIFACTS, "boot.img": b"boot", "data.img": IMAGE[::-1]}, capsys=capsys)
    assert [n for n, _, _ in members(bundle)] == ["sw-description", "rootfs.ext4", "boot.img", "data.img",
                                                 "rootfs.ext4.zckbody", "data.img.zckbody"]
    full = tree(bundle)["software"]["stable"]["copy2-full"]["images"]
    assert [e["filename"] for e in full] == ["rootfs.ext4.zckbody", "boot.img", "data.img.zckbody"]


@pytest.mark.parametrize("text, expected", [("compatible", (delta.COMPATIBLE, None)), ("fine", ("fine", delta.FINE_KIB << 10)),
                                            ("fine:4", ("fine", 4096)), ("fine:1024", ("fine", 1 << 20))])
def test_profiles(text, expected) -> None:
    profile = parse_profile(text)
    assert (profile.name, profile.chunk_bytes) == expected and str(parse_profile(str(profile))) == str(profile)


@pytest.mark.parametrize("text", ["fine:6", "fine:0", "fine:2048", "fine:x", "compatible:16", "coarse", ""])
def test_bad_profiles(text) -> None:
    with pytest.raises(ValueError):
        parse_profile(text)


def test_a_bad_profile_is_a_usage_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        make(tmp_path, ab(), ARTIFACTS, "--delta", "fine:6", capsys=capsys)
    assert exc.value.code == 2
    assert "multiple of 4 KiB" in capsys.readouterr().err


SELF = "self-contained"
BAD: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    # case: (template, extra args, fragment of the one error line)
    "no chain": (ab().replace('chain = "raw"; ', ""), (), "properties.chain: required by the delta handler"),
    "no source": (ab().replace('source = "/dev/mmcblk0p3"; ', ""), (), "properties.source: required"),
    "chain delta": (ab().replace('chain = "raw"', 'chain = "delta"'), (), "cannot chain to 'delta'"),
    "compressed": (ab(attrs='compressed = "zstd";'), (), "compressed: a delta image is compressed chunk by chunk"),
    "encrypted": (ab(attrs="encrypted = true;"), (), "encrypted: zchunk chunk data is never encrypted"),
    "installed-directly": (ab(attrs="installed-directly = true;"), (), "installed-directly: a delta header cannot"),
    "static url, self-contained": (ab('url = "https://x/y.zck";'), (), "for a static URL build with --delta-layout url"),
    "no url, url layout": (ab(), ("--delta-layout", "url"), "needs the http(s) URL the .zck will be served at"),
    "url without a file name": (ab('url = "https://x/";'), ("--delta-layout", "url"), "needs the http(s) URL"),
    "artifact zckfile": (ab('zckfile = "chunks.bin";'), ("--delta-layout", "artifact"), "must end in .zck"),
    "zckfile is the bundle": (ab('zckfile = "update.swu.zck";'), ("--delta-layout", "artifact", "-o", "OUT"),
                              "would replace the bundle itself"),
    "zckfile clashes": (ab('zckfile = "app.conf";'), (), "zckfile 'app.conf' is the name of another member"),
    "zckfile with a slash": (ab('zckfile = "a/b";'), (), "chunk file 'a/b': expected a flat file name"),
    "two zckfiles, one image": (ab().replace('source = "/dev/mmcblk0p2";', 'source = "/dev/mmcblk0p2"; '
                                             'zckfile = "other.zckbody";'), (), "one image has one chunk file"),
    "top-level image, self-contained": (
        'software = { version = "1"; images = ( ' + entry(SLOT_B, SLOT_A) + ' ); };\n', (),
        "put the image into a selection (software.SET.MODE.images)"),
    "full mode exists": (ab(extra='    copy2-full = { images = ( ); };\n'), (),
                         "cannot add the full-install mode 'copy2-full': software.stable has one already"),
    "not an image": ('software = { version = "1"; stable = { copy2 = { files = ( { filename = "rootfs.ext4"; '
                     'type = "delta"; path = "/x"; } ); }; }; };\n', (), "put it under `images`"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_delta_entries_are_one_clear_line_and_no_output(tmp_path, capsys, case) -> None:
    text, extra, fragment = BAD[case]
    extra = tuple(str(tmp_path / "out" / "update.swu.zck") if a == "OUT" else a for a in extra)
    rc, out, err, bundle = make(tmp_path, text, ARTIFACTS, *extra, capsys=capsys)
    assert rc == 2, err
    [line] = err.splitlines()
    assert line.startswith("mkswu: error: ") and "sw-description.in:" in line and fragment in line, line
    assert list(bundle.parent.iterdir()) == []


def test_an_empty_image_is_refused(tmp_path, capsys) -> None:
    rc, _, err, bundle = make(tmp_path, ab(), {**ARTIFACTS, "rootfs.ext4": b""}, capsys=capsys)
    assert rc == 2 and "rootfs.ext4 is empty: nothing to chunk" in err
    assert list(bundle.parent.iterdir()) == []


def test_otad_info_shows_the_delta_and_the_full_selections(tmp_path, pki, capsys) -> None:
    from tests.conftest import run_cli

    bundle = built(tmp_path, ab(), ARTIFACTS, "-k", cms(pki), capsys=capsys)
    _, out, _ = run_cli(["info", bundle, "-k", pki.ca_pem], capsys)
    assert "selection stable,copy2: " in out and "image rootfs.ext4 [delta] -> /dev/mmcblk0p3" in out
    assert "selection stable,copy2-full: " in out and "image rootfs.ext4.zckbody [raw, zstd] -> /dev/mmcblk0p3" in out
