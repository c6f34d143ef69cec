"""Property tests for AES decryption: hostile ciphertext only ever raises otad's own errors.

Random bytes, and real ciphertext truncated or with flipped bits, go through `AesCbcReader` alone
and through the whole byte path (decrypt → gunzip/unzstd → sink) with any key size and chunk.
"""

from __future__ import annotations

import io

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from otad.errors import DecryptError, OtadError
from otad.install.pipeline import Decoding, stream_artifact
from otad.swu.crypto import AesCbcReader, AesKey
from tests.bundles import gz, zst

FUZZ = settings(max_examples=300, deadline=None)

keys = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
ivs = st.binary(min_size=16, max_size=16)
chunks = st.sampled_from([16, 32, 100, 4096])


def encrypt(plain: bytes, key: bytes, iv: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()


@st.composite
def ciphertexts(draw: st.DrawFn) -> tuple:
    """(stored bytes, key, iv, compression): random, or real ciphertext of random or compressed
    plaintext that is then cut or has bits flipped."""
    key, iv = draw(keys), draw(ivs)
    compressed = draw(st.sampled_from([None, "zlib", "zstd"]))
    if draw(st.booleans()):
        return draw(st.binary(max_size=3000)), key, iv, compressed
    plain = draw(st.binary(max_size=2000))
    plain = {None: plain, "zlib": gz(plain), "zstd": zst(plain)}[compressed]
    stored = bytearray(encrypt(plain, key, iv))
    for index in draw(st.lists(st.integers(0, len(stored) - 1), max_size=3)):
        stored[index] ^= draw(st.integers(1, 255))
    cut = draw(st.integers(0, len(stored)))
    return bytes(stored[:cut] if draw(st.booleans()) else stored), key, iv, compressed


@FUZZ
@given(ciphertexts(), chunks, st.integers(1, 5000))
def test_aes_reader_raises_only_decrypt_errors(case, chunk, n) -> None:
    stored, key, iv, _ = case
    reader = AesCbcReader(io.BytesIO(stored), key, iv, "fuzz.img", chunk)
    try:
        while True:
            data = reader.read(n)
            assert len(data) <= n and reader.buffered <= chunk + 16
            if not data:
                break
    except DecryptError as exc:
        assert "fuzz.img" in str(exc)


class CappedSink:
    capacity = 1 << 20

    def write(self, data: bytes) -> None:
        pass


@FUZZ
@given(ciphertexts(), chunks)
def test_byte_path_with_encryption_raises_only_otad_errors(case, chunk) -> None:
    stored, key, iv, compressed = case
    decoding = Decoding(compressed, 1 << 20, encrypted=True, key=AesKey(key, iv))
    try:
        stream_artifact(io.BytesIO(stored), "fuzz.img", None, decoding, CappedSink(), chunk=chunk)
    except OtadError as exc:
        assert "fuzz.img" in str(exc)
