"""AES-CBC for encrypted artifacts: the device key file and a streaming decryptor.

Owns the key file (SWUpdate's `-K` form `<hex key> <hex iv>`, and the `key=<hex>` / `iv=<hex>`
lines that swugenerator and `openssl enc -P` write) and `AesCbcReader`, which decrypts in bounded
chunks and strips the PKCS#7 padding at the very end. AES-CBC has no integrity of its own: the
sha256 over the stored bytes (install/pipeline.py) is what ties the ciphertext to sw-description.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from otad.errors import ConfigError, DecryptError
from otad.smallfile import read_bytes
from otad.swu.cpio import SupportsRead

log = logging.getLogger(__name__)

AES_BLOCK = 16
KEY_HEX_DIGITS = {32: 128, 48: 192, 64: 256}  # hex digits in the key file → AES key bits, as SWUpdate
IV_HEX_DIGITS = 2 * AES_BLOCK
DEFAULT_CHUNK = 1 << 20
_FORMATS = ("'<hex key> <hex iv>' (SWUpdate -K) or 'key=<hex>' and 'iv=<hex>' lines (swugenerator -K)")


@dataclass(frozen=True)
class AesKey:
    """The device's AES key and default IV. `iv` None: only images with their own `ivt` can be
    decrypted (a swugenerator key file may hold the key alone). The key never appears in a repr."""

    key: bytes = field(repr=False)
    iv: Optional[bytes] = None
    source: str = "AES key file"

    def __post_init__(self) -> None:
        if len(self.key) * 2 not in KEY_HEX_DIGITS:
            raise ConfigError(f"AES key: expected 16, 24 or 32 bytes, got {len(self.key)}", self.source)
        if self.iv is not None and len(self.iv) != AES_BLOCK:
            raise ConfigError(f"AES IV: expected {AES_BLOCK} bytes, got {len(self.iv)}", self.source)

    @property
    def bits(self) -> int:
        return len(self.key) * 8

    def iv_for(self, ivt: Optional[str], image: str) -> bytes:
        """The image's own `ivt` (32 hex digits, checked by the manifest) or the key file's IV."""
        if ivt:
            return bytes.fromhex(ivt)
        if self.iv is None:
            raise DecryptError(f"encrypted without an ivt in sw-description, and {self.source} has no iv= line",
                               image)
        return self.iv


def parse_key_file(text: str, source: str) -> AesKey:
    """Either format, told apart by '=' (hex never holds one). Errors name file:line and never
    quote key material: messages end up in logs and in hawkBit feedback."""
    lines = text.splitlines()
    if any("=" in line for line in lines):
        return _parse_assignments(lines, source)
    return _parse_swupdate(lines, source)


def load_key_file(path: str) -> AesKey:
    raw = read_bytes(path, "the AES key file", limit=4096, error=ConfigError)  # two short lines
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"AES key file: expected ASCII text {_FORMATS}", path) from None
    return parse_key_file(text, path)


def _parse_swupdate(lines: List[str], source: str) -> AesKey:
    """SWUpdate reads the first two whitespace-separated words (fscanf "%ms %ms"), so key and IV
    may sit on one line or two. A third word is the salt of SWUpdate before 2021, now ignored."""
    words = [(number, word) for number, line in enumerate(lines, 1) for word in line.split()]
    if len(words) < 2:
        where = f"{source}:{words[0][0]}" if words else source
        raise ConfigError(f"AES key file: expected {_FORMATS}, got {len(words)} word(s)", where)
    if len(words) > 3:
        raise ConfigError(f"AES key file: unexpected text after '<hex key> <hex iv>' ({len(words)} words)",
                          f"{source}:{words[3][0]}")
    if len(words) == 3:
        log.warning("%s:%d: third word (the salt of old SWUpdate key files) ignored", source, words[2][0])
    key = _hex("key", words[0][1], KEY_HEX_DIGITS, f"{source}:{words[0][0]}")
    iv = _hex("iv", words[1][1], {IV_HEX_DIGITS: 0}, f"{source}:{words[1][0]}")
    return AesKey(key, iv, source)


def _parse_assignments(lines: List[str], source: str) -> AesKey:
    """`key=<hex>`, `iv=<hex>` and (ignored) `salt=<hex>` lines; blanks around names and '=' are
    allowed, as `openssl enc -P` prints `iv =...`."""
    found: Dict[str, Tuple[int, str]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        name, equals, value = (part.strip() for part in line.partition("="))
        where = f"{source}:{number}"
        if not equals or name not in ("key", "iv", "salt"):
            raise ConfigError(f"AES key file: expected 'key=<hex>', 'iv=<hex>' or 'salt=<hex>', got a line "
                              f"starting {_shown_name(name)}", where)
        if name in found:
            raise ConfigError(f"AES key file: {name}= given twice (first on line {found[name][0]})", where)
        found[name] = (number, value)
    if "key" not in found:
        raise ConfigError("AES key file: no key=<hex> line", source)
    key = _hex("key", found["key"][1], KEY_HEX_DIGITS, f"{source}:{found['key'][0]}")
    iv = None
    if "iv" in found:
        iv = _hex("iv", found["iv"][1], {IV_HEX_DIGITS: 0}, f"{source}:{found['iv'][0]}")
    return AesKey(key, iv, source)


def _hex(what: str, text: str, lengths: Dict[int, int], where: str) -> bytes:
    allowed = " or ".join(str(n) for n in lengths)
    if len(text) not in lengths:
        raise ConfigError(f"AES key file: {what}: expected {allowed} hex digits, got {len(text)} characters",
                          where)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"AES key file: {what}: expected hex digits only (0-9, a-f)", where) from None


def _shown_name(name: str) -> str:
    """Quote a setting name for an error, but never something that may be a key."""
    if name.isidentifier() and len(name) <= 16:
        return repr(name)
    return f"with {len(name)} characters before '='" if name else "without a name"


class AesCbcReader:
    """Decrypts a stream of AES-CBC ciphertext; `read(n)` returns at most n plaintext bytes.

    The last plaintext block is held back until the source ends, because only then is it known
    to carry the PKCS#7 padding. Plaintext held never exceeds one chunk plus that block
    (`buffered`), however the source splits its reads.
    """

    def __init__(self, source: SupportsRead, key: bytes, iv: bytes, name: str, chunk: int = DEFAULT_CHUNK) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # lazy: `otad --help`

        assert len(iv) == AES_BLOCK and chunk >= AES_BLOCK
        self._decryptor: Any = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._source = source
        self._name = name
        self._chunk = chunk
        self._ready = b""  # plaintext that may be returned
        self._offset = 0  # how much of _ready was returned
        self._last = b""  # the last plaintext block so far: returned only after unpadding at EOF
        self._stored = 0  # ciphertext bytes read
        self._eof = False

    @property
    def buffered(self) -> int:
        """Plaintext bytes held (decrypted, not yet returned)."""
        return len(self._ready) - self._offset + len(self._last)

    def read(self, n: int) -> bytes:
        while self._offset == len(self._ready) and not self._eof:
            self._fill()
        out = self._ready[self._offset:self._offset + n]
        self._offset += len(out)
        return out

    def _fill(self) -> None:
        # Read up to the next chunk boundary: the decryptor keeps a partial block, so the
        # plaintext it returns stays within one chunk.
        data = self._source.read(max(self._chunk - self._stored % AES_BLOCK, AES_BLOCK))
        if not data:
            self._finish()
            return
        self._stored += len(data)
        plain = self._last + self._decryptor.update(data)
        self._ready, self._offset = plain[:-AES_BLOCK], 0
        self._last = plain[-AES_BLOCK:]

    def _finish(self) -> None:
        self._eof = True
        if self._stored == 0:
            raise DecryptError("encrypted image is empty (AES-CBC with PKCS#7 padding is at least one "
                               f"{AES_BLOCK}-byte block)", self._name)
        if self._stored % AES_BLOCK:
            raise DecryptError(f"ciphertext is {self._stored} bytes, not a multiple of the {AES_BLOCK}-byte "
                               "AES block (truncated, or not AES-CBC)", self._name)
        self._decryptor.finalize()  # CBC without padding: nothing left after whole blocks
        pad = self._last[-1]
        if not 1 <= pad <= AES_BLOCK or self._last[-pad:] != bytes([pad]) * pad:
            raise DecryptError("bad PKCS#7 padding after decryption: wrong AES key or IV, or the image was "
                               "not encrypted with AES-CBC", self._name)
        self._ready, self._offset = self._last[:-pad], 0
        self._last = b""
