"""Where the chunks of a delta image come from, as the installer asks for them: a small Protocol its callers fill.

A delta entry names its chunk data three ways: a static `url` (L1), a hawkBit artifact of the same
deployment named `zckfile` (L2), or a member of the bundle itself named `zckfile`, fetched by Range
from the bundle's own download link (L3). The installer knows none of the servers: `otad install`
(otad.update) gives it a plain HTTP opener for L1, the daemon (otad.hawkbit.deployment) adds the
deployment's artifacts and the bundle's link, through its DDI session, auth and TLS. Also the
delta settings of an install request (`DeltaOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

from otad.retry import ResumePolicy

if TYPE_CHECKING:  # otad.delta loads when a bundle has a delta image, not for every install
    from otad.delta.fetch import Opener


@dataclass(frozen=True)
class RemoteFile:
    """A file chunks are fetched from by Range: its URL, size, validator and how to open it."""

    url: str
    size: int
    opener: Opener
    etag: Optional[str] = None  # sent as If-Range; a different one from the server ends the fetch


class ChunkSources(Protocol):
    """What the caller can give for a delta image's chunks (None: not here)."""

    def static(self, url: str) -> Optional[Opener]:
        """An opener for a URL written in the signed sw-description (L1)."""

    def artifact(self, name: str) -> Optional[RemoteFile]:
        """The deployment's artifact named `name` (L2)."""

    def bundle(self) -> Optional[RemoteFile]:
        """The bundle being installed, for Range requests into its last member (L3)."""

    def leave_stream(self) -> None:
        """The bundle is not read any further from its stream (its chunks come by Range now)."""

    def upto(self, end: Optional[int]) -> None:
        """The bundle's stream will be read up to byte `end` at most (None: to its end): what a
        server sends beyond it would be wasted, as the last member may not be read from it."""


class NoChunkSources:
    """No server at all: delta images whose chunks are not inside the bundle are refused."""

    def static(self, url: str) -> Optional[Opener]:
        return None

    def artifact(self, name: str) -> Optional[RemoteFile]:
        return None

    def bundle(self) -> Optional[RemoteFile]:
        return None

    def leave_stream(self) -> None:
        pass

    def upto(self, end: Optional[int]) -> None:
        pass


@dataclass(frozen=True)
class DeltaOptions:
    """How delta images are installed (otad.conf's `delta` section, and the caller's sources)."""

    sources: ChunkSources = NoChunkSources()
    state_dir: Optional[str] = None  # the slots' cached indexes and the resume journal; None: neither
    max_ranges: int = 50  # unless the bundle's max-ranges says; never above MAX_RANGES_CAP
    min_interval_s: float = 0.1
    libzck: bool = True
    python_index: bool = False
    checkpoint_bytes: int = 4 << 20
    retry: ResumePolicy = ResumePolicy()
