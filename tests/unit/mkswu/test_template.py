"""otad.mkswu.template: what mkswu writes into the template text (layout and comments kept),
swugenerator's substitutions, and entry attributes it reads (legacy compressed, ubivol)."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from tests.unit.mkswu.helpers import IMAGE, aes_key_file, built, image, member, template, tree


def test_legacy_compressed_true_means_zlib(tmp_path, capsys) -> None:
    bundle = built(tmp_path, template(image(attrs="compressed = true;")), {"rootfs.img": IMAGE}, capsys=capsys)
    assert gzip.decompress(member(bundle, "rootfs.img.zlib")) == IMAGE
    assert tree(bundle)["software"]["images"][0]["compressed"] is True


def test_ubivol_gets_its_decompressed_size_like_swugenerator(tmp_path, capsys) -> None:
    entry = '{ filename = "root.ubifs"; volume = "rootfs"; type = "ubivol"; compressed = "zstd"; }'
    bundle = built(tmp_path, template(entry), {"root.ubifs": IMAGE}, capsys=capsys)
    assert tree(bundle)["software"]["images"][0]["properties"] == {"decompressed-size": str(len(IMAGE))}


SHA_X = hashlib.sha256(b"x").hexdigest()

LAYOUTS = {
    "one line": ('software = { images = ( { filename = "x"; device = "/dev/a"; } ); };\n',
                 f'software = {{ images = ( {{ filename = "x"; device = "/dev/a"; sha256 = "{SHA_X}"; }} ); }};\n'),
    "no terminator": ('software = { images = ( { filename = "x" } ); };\n',
                      f'software = {{ images = ( {{ filename = "x"; sha256 = "{SHA_X}"; }} ); }};\n'),
    "own lines, trailing comment kept": (
        'software = {\n  images = (\n    {\n      filename = "x";\n      device = "/dev/a" // slot B\n    }\n  );\n};\n',
        f'software = {{\n  images = (\n    {{\n      filename = "x";\n      device = "/dev/a"; // slot B\n'
        f'      sha256 = "{SHA_X}";\n    }}\n  );\n}};\n'),
    "existing sha256 replaced in place": (
        'software = { images = ( { sha256 = "0000"; /* was */ filename = "x"; } ); };\n',
        f'software = {{ images = ( {{ sha256 = "{SHA_X}"; /* was */ filename = "x"; }} ); }};\n'),
    "colon syntax and CRLF": (
        'software:\r\n{\r\n  images: (\r\n    {\r\n      filename: "x";\r\n    }\r\n  );\r\n};\r\n',
        f'software:\r\n{{\r\n  images: (\r\n    {{\r\n      filename: "x";\r\n      sha256 = "{SHA_X}";\r\n'
        '    }\r\n  );\r\n};\r\n'),
    "adjacent string literals": ('software = { images = ( { filename = "x" "" ; } ); };\n',
                                 f'software = {{ images = ( {{ filename = "x" "" ; sha256 = "{SHA_X}"; }} ); }};\n'),
}


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_template_edits_keep_the_layout(tmp_path, capsys, case) -> None:
    text, expected = LAYOUTS[case]
    bundle = built(tmp_path, text, {"x": b"x"}, capsys=capsys)
    assert member(bundle, "sw-description").decode() == expected


def test_renamed_and_encrypted_entry_is_edited_in_place(tmp_path, capsys) -> None:
    text = ('software = {\n  version = "1.0"; # the release\n  images = (\n    {\n      filename = "rootfs.img";\n'
            '      compressed = "zstd";\n      encrypted = true;\n      properties = { atomic-install = "true" };\n'
            '      ivt = "00";\n    }\n  );\n};\n')
    bundle = built(tmp_path, text, {"rootfs.img": IMAGE}, "-K", aes_key_file(tmp_path), capsys=capsys)
    entry = tree(bundle)["software"]["images"][0]
    stored = member(bundle, "rootfs.img.zstd.enc")
    size = entry["properties"]["decrypted-size"]
    assert member(bundle, "sw-description").decode() == (
        'software = {\n  version = "1.0"; # the release\n  images = (\n    {\n      filename = "rootfs.img.zstd.enc";\n'
        '      compressed = "zstd";\n      encrypted = true;\n'
        f'      properties = {{ atomic-install = "true"; decrypted-size = "{size}"; }};\n'
        f'      ivt = "{entry["ivt"]}";\n      sha256 = "{hashlib.sha256(stored).hexdigest()}";\n    }}\n  );\n}};\n')


def test_variables_and_swugenerator_functions_are_substituted(tmp_path, capsys) -> None:
    (tmp_path / "vars.conf").write_text('variables = { VERSION = "4.2.0"; DEV = "/dev/mmcblk0p3"; };\n')
    text = template(image(device="@@DEV@@", attrs='data = "$swupdate_get_sha256(rootfs.img) '
                                                 '$swupdate_get_size(rootfs.img)";'))
    text = text.replace('"1.0.0"', '"@@VERSION@@"')
    bundle = built(tmp_path, text, {"rootfs.img": IMAGE}, "-c", tmp_path / "vars.conf", capsys=capsys)
    software = tree(bundle)["software"]
    assert software["version"] == "4.2.0" and software["images"][0]["device"] == "/dev/mmcblk0p3"
    assert software["images"][0]["data"] == f"{hashlib.sha256(IMAGE).hexdigest()} {len(IMAGE)}"
