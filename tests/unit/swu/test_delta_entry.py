"""`type = "delta"` images: SWUpdate's delta handler properties, typed; refusals before anything is read."""

from __future__ import annotations

from typing import Optional

import pytest

from otad.errors import ManifestError
from otad.swu.manifest import DeltaProperties, parse

SHA = "b" * 64


def delta_image(properties: str, attributes: str = "") -> Optional[DeltaProperties]:
    desc = (f'software = {{ version = "1.0"; hardware-compatibility = ["1.0"];\n'
            f'  images = ( {{ filename = "rootfs.ext4"; type = "delta"; device = "/dev/mmcblk0p3";\n'
            f'    sha256 = "{SHA}"; {attributes} properties = {{ {properties} }}; }} ); }};\n').encode()
    [image] = parse(desc).select().images
    return image.delta


def test_swupdates_properties_become_typed_fields() -> None:
    props = delta_image('url = "https://srv/rootfs.zck"; chain = "raw"; source = "/dev/mmcblk0p2"; '
                        'source-size = "96M"; max-ranges = "90"; zckloglevel = "error"; debug-chunks = "true";')
    assert props == DeltaProperties(chain="raw", source="/dev/mmcblk0p2", url="https://srv/rootfs.zck",
                                    source_size=96 << 20, max_ranges=90)


def test_dynamic_url_names_the_chunk_data_by_zckfile_and_detect_leaves_the_size_to_the_filesystem() -> None:
    props = delta_image('url = "dynamic"; zckfile = "rootfs.ext4.zck"; chain = "raw"; source = "/dev/mmcblk0p2"; '
                        f'source-size = "detect"; image-sha256 = "{SHA.upper()}";')
    assert props is not None
    assert (props.url, props.zckfile, props.source_size, props.max_ranges, props.image_sha256) == \
        (None, "rootfs.ext4.zck", None, None, SHA)


def test_other_images_have_no_delta_properties() -> None:
    desc = b'software = { version = "1.0"; images = ( { filename = "a"; device = "/dev/x"; } ); };'
    assert parse(desc).select().images[0].delta is None


@pytest.mark.parametrize("properties, attributes, message", [
    ('url = "u"; source = "/dev/a";', "", "properties.chain: expected the handler"),
    ('url = "u"; chain = "delta"; source = "/dev/a";', "", "(not \"delta\"), got 'delta'"),
    ('url = "u"; chain = "ubivol"; source = "/dev/a";', "", "properties.chain: expected one of raw"),
    ('url = "u"; chain = "raw";', "", "properties.source: expected the device"),
    ('chain = "raw"; source = "/dev/a";', "", "properties.url: expected the URL of the .zck, or \"dynamic\""),
    ('url = "dynamic"; chain = "raw"; source = "/dev/a";', "", "properties.url: expected"),
    ('url = "dynamic"; zckfile = "../x.zck"; chain = "raw"; source = "/dev/a";', "", "properties.zckfile"),
    ('url = "u"; chain = "raw"; source = "/dev/a"; max-ranges = "0";', "", "properties.max-ranges"),
    ('url = "u"; chain = "raw"; source = "/dev/a"; max-ranges = "ten";', "", "properties.max-ranges"),
    ('url = "u"; chain = "raw"; source = "/dev/a"; source-size = "big";', "", "properties.source-size"),
    ('url = "u"; chain = "raw"; source = "/dev/a"; image-sha256 = "abc";', "", "properties.image-sha256"),
    ('url = "u"; chain = "raw"; source = "/dev/a";', "installed-directly = true;", "installed-directly: expected false"),
    ('url = "u"; chain = "raw"; source = "/dev/a";', 'compressed = "zstd";', "compressed: expected nothing"),
    ('url = "u"; chain = "raw"; source = "/dev/a";', "encrypted = true;", "encrypted: expected nothing"),
])
def test_what_swupdate_refuses_or_would_guess_is_refused_naming_the_key(properties: str, attributes: str,
                                                                         message: str) -> None:
    with pytest.raises(ManifestError) as info:
        delta_image(properties, attributes)
    assert message in str(info.value) and "images[0]" in str(info.value)
