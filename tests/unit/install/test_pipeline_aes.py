"""Encrypted artifacts in the byte path: hash over ciphertext → decrypt → decompress → sink.

The sha256 covers the stored (encrypted) bytes; a tampered ciphertext is reported as a hash
mismatch, never as a padding or decompression error (that would be a padding oracle); the
padding is checked even when the decompressor stops before the AES stream ends.
"""

from __future__ import annotations

import io
import random
import tracemalloc
from typing import Optional

import pytest

from otad.errors import DecompressError, DecryptError, ImageHashMismatch
from tests.unit.install.test_pipeline import ListSink
from otad.install.pipeline import Decoding, stream_artifact
from otad.swu.crypto import AesKey
from tests.bundles import gz, openssl_aes, sha256, zst

KEY = bytes(range(32)).hex()
IV = bytes(range(100, 116)).hex()
IVT = bytes(range(200, 216)).hex()
DEVICE_KEY = AesKey(bytes.fromhex(KEY), bytes.fromhex(IV), "aes.key")
# Fixed bytes: which error a wrong key or a flipped bit causes must not depend on the run.
PAYLOAD = bytes(random.Random(3).getrandbits(8) for _ in range(100_000)) + bytes(300_000) + b"tail"


class CountingSink:
    capacity: Optional[int] = None

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes) -> None:
        self.count += len(data)


def encrypted(compressed: Optional[str] = None, key: AesKey = DEVICE_KEY, ivt: Optional[str] = None) -> Decoding:
    return Decoding(compressed, 1 << 27, encrypted=True, key=key, ivt=ivt)


@pytest.mark.parametrize("compressed,encode", [(None, lambda d: d), ("zlib", gz), ("zstd", zst)])
def test_encrypted_artifact_is_decrypted_then_decompressed_and_hashed_as_stored(compressed, encode) -> None:
    stored = openssl_aes(encode(PAYLOAD), KEY, IV)
    sink = ListSink()
    result = stream_artifact(io.BytesIO(stored), "img", sha256(stored), encrypted(compressed), sink, chunk=4096)
    assert sink.data == PAYLOAD and result.sha256 == sha256(stored)
    assert (result.stored_bytes, result.written_bytes) == (len(stored), len(PAYLOAD))
    assert max(len(c) for c in sink.chunks) <= 4096


def test_the_images_ivt_is_used_instead_of_the_key_file_iv() -> None:
    stored = openssl_aes(gz(PAYLOAD), KEY, IVT)
    sink = ListSink()
    stream_artifact(io.BytesIO(stored), "img", sha256(stored), encrypted("zlib", ivt=IVT), sink)
    assert sink.data == PAYLOAD


def test_without_a_key_nothing_is_read_and_the_error_says_how_to_configure_one() -> None:
    with pytest.raises(DecryptError, match=r"image 'img': image is encrypted but no AES key is configured "
                                           r"\(install.aes_key_file or -K FILE\)"):
        stream_artifact(io.BytesIO(b"x" * 32), "img", None, encrypted(key=None), ListSink())  # type: ignore[arg-type]


def test_padding_is_checked_even_when_the_gzip_stream_ends_first() -> None:
    plain = gz(PAYLOAD)
    plain += bytes(16 - len(plain) % 16)  # whole blocks, last byte 0: not PKCS#7
    stored = openssl_aes(plain, KEY, IV, pad=False)
    with pytest.raises(DecryptError, match="bad PKCS#7 padding"):
        stream_artifact(io.BytesIO(stored), "img", sha256(stored), encrypted("zlib"), ListSink())


def test_data_after_the_compressed_stream_inside_the_ciphertext_is_refused() -> None:
    stored = openssl_aes(gz(PAYLOAD) + b"junk", KEY, IV)
    with pytest.raises(DecompressError, match="data after the end of the"):
        stream_artifact(io.BytesIO(stored), "img", sha256(stored), encrypted("zlib"), ListSink())


@pytest.mark.parametrize("compressed,encode", [(None, lambda d: d), ("zlib", gz), ("zstd", zst)])
def test_tampered_ciphertext_is_a_hash_mismatch_not_a_decryption_error(compressed, encode) -> None:
    stored = openssl_aes(encode(PAYLOAD), KEY, IV)
    tampered = bytearray(stored)
    tampered[-20] ^= 0x40  # garbles the last two blocks: padding (and the compressed tail) break
    with pytest.raises(ImageHashMismatch, match=r"image 'img': sha256 mismatch") as info:
        stream_artifact(io.BytesIO(bytes(tampered)), "img", sha256(stored), encrypted(compressed), ListSink())
    assert isinstance(info.value.__cause__, (DecryptError, DecompressError))


def test_wrong_key_with_a_matching_hash_is_reported_as_a_decryption_error() -> None:
    stored = openssl_aes(PAYLOAD, KEY, IV)
    wrong = AesKey(bytes(range(1, 33)), bytes.fromhex(IV))
    with pytest.raises(DecryptError, match="wrong AES key or IV"):
        stream_artifact(io.BytesIO(stored), "img", sha256(stored), encrypted(key=wrong), ListSink())


def test_wrong_key_on_a_compressed_image_fails_in_the_decompressor() -> None:
    stored = openssl_aes(zst(PAYLOAD), KEY, IV)
    wrong = AesKey(bytes(range(1, 33)), bytes.fromhex(IV))
    with pytest.raises(DecompressError, match="not a zstd stream"):
        stream_artifact(io.BytesIO(stored), "img", sha256(stored), encrypted("zstd", key=wrong), ListSink())


def test_decrypting_a_large_image_keeps_memory_flat() -> None:
    chunk = 64 << 10
    stored = openssl_aes(bytes(16 << 20), KEY, IV)
    sink = CountingSink()
    stream_artifact(io.BytesIO(openssl_aes(b"warm", KEY, IV)), "w", None, encrypted(), sink)  # lazy imports first
    sink = CountingSink()
    tracemalloc.start()
    try:
        stream_artifact(io.BytesIO(stored), "img", None, encrypted(), sink, chunk=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.count == 16 << 20
    assert peak < 8 * chunk, peak  # a few chunk-sized buffers in flight, never the 16 MiB
