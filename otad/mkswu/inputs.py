"""The files a build reads: keys, the template, the variables file and the artifacts.

Every read that fails is one ConfigError naming the file. Artifacts are found in the -a
directories in the order given and read in bounded chunks; what the bytes mean is the others'.
"""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator, Sequence

from otad.errors import ConfigError
from otad.smallfile import read_bytes

_CHUNK = 1 << 20
MAX_INPUT_BYTES = 1 << 20  # keys, variables, the template (a bundle's sw-description is capped at 1 MiB)


def read_input(path: str, what: str) -> bytes:
    return read_bytes(path, what, limit=MAX_INPUT_BYTES, error=ConfigError)


def find_artifact(name: str, dirs: Sequence[str], where: str) -> str:
    """The first `dir/name` that exists, in the order the directories were given."""
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
        if os.path.exists(path):
            raise ConfigError(f"artifact {path}: not a regular file", where)
    raise ConfigError(f"artifact {name!r} not found in {', '.join(dirs)}", where)


@contextlib.contextmanager
def open_source(path: str) -> Iterator[IO[bytes]]:
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path) from exc
    with f:
        yield f


def chunks(src: IO[bytes], path: str) -> Iterator[bytes]:
    while True:
        try:
            data = src.read(_CHUNK)
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", path) from exc
        if not data:
            return
        yield data
