"""A .swu bundle as a forward-only stream: sw-description, its signature, then artifacts.

`Bundle` owns the member order rules (sw-description first, its `.sig` second in a signed
setup) and the signature check: `open_description` returns a `VerifiedDescription` only
after the signature over the exact sw-description bytes passed. Nothing of the description
is trusted or parsed before that. Artifacts are handed out afterwards, in archive order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from otad.errors import BundleFormatError, SignatureError
from otad.swu.cpio import CpioHeader, CpioMember, CpioReader, SupportsRead
from otad.swu.manifest import SwDescription, parse

if TYPE_CHECKING:  # cryptography loads on first use: the idle daemon stays small
    from otad.swu.signature import SignerInfo, Verifier

log = logging.getLogger(__name__)

SW_DESCRIPTION = "sw-description"
SIGNATURE = "sw-description.sig"
MAX_DESCRIPTION_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 64 << 10


@dataclass(frozen=True)
class BundleHead:
    """The first two members as read, not yet verified."""

    raw: bytes
    signature: Optional[bytes]


@dataclass(frozen=True)
class VerifiedDescription:
    """sw-description whose signature was checked (or explicitly not required)."""

    raw: bytes
    description: SwDescription
    signer: Optional[SignerInfo]  # None only when installing unsigned bundles was allowed
    signature: Optional[bytes] = None  # as read, kept for a later resume


class Bundle:
    """Reads one bundle from `source` (anything with read(n): a file, a pipe, an HTTP body)."""

    def __init__(self, source: SupportsRead, *, name: str = "bundle") -> None:
        self.name = name
        self._reader = CpioReader(source, source_name=name)
        self._members = iter(self._reader)
        self._pushed_back: Optional[CpioMember] = None
        self._opened = False
        self._given_head: Optional[BundleHead] = None

    @classmethod
    def resumed(cls, source: SupportsRead, head: BundleHead, header: CpioHeader, offset: int, consumed: int,
                crc_sum: int, *, name: str = "bundle") -> "Bundle":
        """A bundle read before up to archive byte `offset`, inside `header`'s member; `source`
        continues from there. `head` is what read_head() returned then; it is verified again."""
        bundle = cls(source, name=name)
        bundle._reader = CpioReader.resumed(source, header, offset, consumed, crc_sum, source_name=name)
        bundle._members = iter(bundle._reader)
        bundle._given_head = head
        return bundle

    @property
    def bytes_read(self) -> int:
        return self._reader.bytes_read

    def _next_member(self) -> Optional[CpioMember]:
        if self._pushed_back is not None:
            member, self._pushed_back = self._pushed_back, None
            return member
        return next(self._members, None)

    def read_head(self) -> BundleHead:
        """Read sw-description and, if it follows, its signature; trust neither yet."""
        assert not self._opened, "the head of the stream is read once"
        self._opened = True
        if self._given_head is not None:
            return self._given_head
        first = self._next_member()
        if first is None or first.name != SW_DESCRIPTION:
            found = "no member" if first is None else f"{first.name!r}"
            raise BundleFormatError(f"first member must be {SW_DESCRIPTION!r}, found {found}", self.name)
        raw = first.read_all(MAX_DESCRIPTION_BYTES)
        second = self._next_member()
        if second is not None and second.name == SIGNATURE:
            return BundleHead(raw, second.read_all(MAX_SIGNATURE_BYTES))
        self._pushed_back = second
        return BundleHead(raw, None)

    def open_description(self, verifier: Optional[Verifier]) -> VerifiedDescription:
        """Read and verify sw-description. `verifier=None` accepts an unsigned bundle."""
        head = self.read_head()
        signer = self.verify(head, verifier)
        return VerifiedDescription(head.raw, parse(head.raw, source=SW_DESCRIPTION), signer, head.signature)

    def verify(self, head: BundleHead, verifier: Optional[Verifier]) -> Optional[SignerInfo]:
        """The signer of `head`, or SignatureError; `verifier=None` accepts an unsigned bundle."""
        if verifier is None:
            log.warning("%s: signature NOT checked: installing unsigned bundles was allowed explicitly", self.name)
            return None
        if head.signature is None:
            raise SignatureError(f"bundle is not signed: second member must be {SIGNATURE!r}; unsigned bundles "
                                 "need --insecure-allow-unsigned (allow_unsigned in otad.conf), development only",
                                 self.name)
        signer = verifier.verify(head.raw, head.signature)
        log.info("%s: signature good, signed by %s", self.name, signer.subject or signer.method)
        return signer

    def artifacts(self) -> Iterator[CpioMember]:
        """The members after the description, in archive order, up to the trailer."""
        assert self._opened, "open_description() must come first"
        while True:
            member = self._next_member()
            if member is None:
                return
            if member.name in (SW_DESCRIPTION, SIGNATURE):
                raise BundleFormatError(f"{member.name!r} appears a second time", self.name)
            yield member
