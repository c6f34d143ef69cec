"""AES-CBC: the streaming decryptor agrees with openssl, holds at most a chunk plus a block, and
every bad input (wrong key, truncation, bad padding, malformed key file) is one clear error."""

from __future__ import annotations

import io
import logging
import random
import re
import subprocess
from pathlib import Path

import pytest

from otad.errors import ConfigError, DecryptError
from otad.swu.crypto import AesCbcReader, AesKey, load_key_file, parse_key_file
from tests.bundles import openssl_aes

# Fixed keys and data: a wrong key fails the padding check for these exact bytes, every run.
KEY = bytes(range(32)).hex()
WRONG_KEY = bytes(range(1, 33)).hex()
IV = bytes(range(100, 116)).hex()
DATA = bytes(random.Random(5).getrandbits(8) for _ in range(50_000)) + bytes(20_000)


class Trickle:
    """Reads of 1..`most` bytes, like a pipe or a slow socket."""

    def __init__(self, data: bytes, seed: int = 1, most: int = 700) -> None:
        self._f = io.BytesIO(data)
        self._rng = random.Random(seed)
        self._most = most

    def read(self, n: int) -> bytes:
        return self._f.read(min(n, self._rng.randint(1, self._most)))


def reader(ciphertext: bytes, key: str = KEY, iv: str = IV, chunk: int = 4096, source=None) -> AesCbcReader:
    return AesCbcReader(source or io.BytesIO(ciphertext), bytes.fromhex(key), bytes.fromhex(iv), "rootfs.img", chunk)


def read_all(r: AesCbcReader, n: int = 1000) -> bytes:
    out = []
    while True:
        data = r.read(n)
        if not data:
            return b"".join(out)
        out.append(data)


@pytest.mark.parametrize("hex_digits", [32, 48, 64])
def test_reader_decrypts_what_openssl_encrypted_with_each_key_size(hex_digits) -> None:
    key = KEY[:hex_digits]
    assert read_all(reader(openssl_aes(DATA, key, IV), key=key)) == DATA


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4095, 4096, 4097, 10_000])
def test_reader_handles_every_padding_length_from_a_trickling_source(size) -> None:
    ciphertext = openssl_aes(DATA[:size], KEY, IV)
    assert read_all(reader(ciphertext, source=Trickle(ciphertext))) == DATA[:size]


def test_read_never_returns_more_than_asked_and_holds_at_most_a_chunk_plus_a_block() -> None:
    chunk = 4096
    ciphertext = openssl_aes(DATA, KEY, IV)
    r = reader(ciphertext, chunk=chunk, source=Trickle(ciphertext, most=3 * chunk))
    rng = random.Random(7)
    out = []
    while True:
        n = rng.choice([1, 15, 16, 1000, chunk, 5 * chunk])
        data = r.read(n)
        assert len(data) <= n and r.buffered <= chunk + 16
        if not data:
            break
        out.append(data)
    assert b"".join(out) == DATA


def test_the_last_block_is_held_back_until_the_source_ends() -> None:
    ciphertext = openssl_aes(b"x" * 40, KEY, IV)  # 48 bytes: 3 blocks, the last one 8 bytes of padding
    r = reader(ciphertext, source=Trickle(ciphertext, most=32))
    first = r.read(100)
    assert first == b"x" * 16  # the second block waits: it might have been the last
    assert read_all(r) == b"x" * 24


def test_wrong_key_is_a_padding_error_naming_the_image() -> None:
    with pytest.raises(DecryptError, match=r"image 'rootfs.img': bad PKCS#7 padding .* wrong AES key or IV"):
        read_all(reader(openssl_aes(DATA, KEY, IV), key=WRONG_KEY))


def test_ciphertext_that_is_not_whole_blocks_is_truncated() -> None:
    ciphertext = openssl_aes(DATA, KEY, IV)
    with pytest.raises(DecryptError, match=rf"ciphertext is {len(ciphertext) - 5} bytes, not a multiple of the "
                                           r"16-byte AES block \(truncated"):
        read_all(reader(ciphertext[:-5]))


def test_bad_padding_in_the_last_block_is_refused() -> None:
    ciphertext = openssl_aes(DATA[:1000] + bytes(24), KEY, IV, pad=False)  # last byte 0: never valid padding
    with pytest.raises(DecryptError, match="bad PKCS#7 padding"):
        read_all(reader(ciphertext))


def test_empty_ciphertext_is_refused() -> None:
    with pytest.raises(DecryptError, match="empty"):
        read_all(reader(b""))


# --- key files ------------------------------------------------------------------------------

def test_swupdate_key_file_is_key_and_iv_on_one_line() -> None:
    key = parse_key_file(f"{KEY} {IV}\n", "aes.key")
    assert (key.key.hex(), key.iv and key.iv.hex(), key.bits) == (KEY, IV, 256)


def test_swupdate_reads_two_words_so_key_and_iv_may_be_on_two_lines() -> None:
    key = parse_key_file(f"{KEY.upper()}\n{IV}\n", "aes.key")
    assert key.key.hex() == KEY and key.iv == bytes.fromhex(IV)


@pytest.mark.parametrize("hex_digits,bits", [(32, 128), (48, 192), (64, 256)])
def test_key_size_follows_the_key_length(hex_digits, bits) -> None:
    assert parse_key_file(f"{KEY[:hex_digits]} {IV}", "aes.key").bits == bits


def test_legacy_salt_word_is_ignored_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        key = parse_key_file(f"{KEY} {IV} 0011223344556677\n", "aes.key")
    assert key.iv == bytes.fromhex(IV)
    assert "aes.key:1: third word" in caplog.text


def test_swugenerator_key_file_has_key_and_iv_lines() -> None:
    key = parse_key_file(f"key={KEY}\niv={IV}\n", "gen.key")
    assert key.key.hex() == KEY and key.iv == bytes.fromhex(IV)


def test_swugenerator_key_file_without_iv_needs_an_ivt_per_image() -> None:
    key = parse_key_file(f"key={KEY}\n", "gen.key")
    assert key.iv is None and key.iv_for(IV, "a.img") == bytes.fromhex(IV)
    with pytest.raises(DecryptError, match=r"image 'a.img': encrypted without an ivt .* gen.key has no iv= line"):
        key.iv_for(None, "a.img")


def test_openssl_enc_p_output_is_a_valid_key_file() -> None:
    printed = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-k", "secret", "-P", "-md", "sha1"],
                             capture_output=True, text=True, check=True).stdout  # salt=, key=, "iv =" lines
    values = dict(re.findall(r"^(\w+)\s*=(\w+)$", printed, re.M))
    key = parse_key_file(printed, "p.key")
    assert key.key == bytes.fromhex(values["key"]) and key.iv == bytes.fromhex(values["iv"])


def test_ivt_overrides_the_key_file_iv() -> None:
    key = parse_key_file(f"{KEY} {IV}", "aes.key")
    assert key.iv_for("ff" * 16, "a.img") == b"\xff" * 16 and key.iv_for(None, "a.img") == bytes.fromhex(IV)


MALFORMED = {
    # case: (file text, location, message fragment)
    "empty": ("", "k", "got 0 word(s)"),
    "key only": (f"{KEY}\n", "k:1", "got 1 word(s)"),
    "key one digit short": (f"{KEY[:-1]} {IV}", "k:1", "key: expected 32 or 48 or 64 hex digits, got 63 characters"),
    "key not hex": (f"{'g' * 64} {IV}", "k:1", "key: expected hex digits only"),
    "iv too long on line 2": (f"{KEY}\n{IV}00\n", "k:2", "iv: expected 32 hex digits, got 34"),
    "four words": (f"{KEY} {IV}\nsalt extra\n", "k:2", "unexpected text"),
    "unknown name": (f"key={KEY}\nmode=cbc\n", "k:2", "expected 'key=<hex>'"),
    "key given twice": (f"key={KEY}\niv={IV}\nkey={KEY}\n", "k:3", "key= given twice (first on line 1)"),
    "no key line": (f"iv={IV}\n", "k", "no key=<hex> line"),
    "key line with bad key": (f"key={KEY[:40]}\n", "k:1", "got 40 characters"),
    "a line without =": (f"key={KEY}\n{IV}\n", "k:2", "expected 'key=<hex>'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_key_file_names_file_and_line_but_never_the_key(case) -> None:
    text, where, fragment = MALFORMED[case]
    with pytest.raises(ConfigError) as info:
        parse_key_file(text, "k")
    assert info.value.where == where and fragment in info.value.what
    assert KEY[:16] not in str(info.value) and KEY[:16].upper() not in str(info.value)
    assert info.value.exit_code == 2


def test_key_file_that_cannot_be_read_or_is_binary_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the AES key file"):
        load_key_file(str(tmp_path / "missing.key"))
    (tmp_path / "bin.key").write_bytes(b"\xff\xfe" * 40)
    with pytest.raises(ConfigError, match=r"bin.key: AES key file: expected ASCII text"):
        load_key_file(str(tmp_path / "bin.key"))


def test_the_key_never_appears_in_a_repr() -> None:
    key = parse_key_file(f"{KEY} {IV}", "aes.key")
    assert KEY not in repr(key) and repr(bytes.fromhex(KEY)) not in repr(key)


def test_an_aes_key_of_a_wrong_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected 16, 24 or 32 bytes, got 20"):
        AesKey(bytes(20), None)
