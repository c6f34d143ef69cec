"""HTTP GETs of file bodies with requests: a body read in pieces as every download reads it, and
the plain opener of chunk requests to a static URL.

Owns `body_reader` (what one socket read brings, never lost in a larger read), which exceptions
mean that a body broke off (BODY_ERRORS), `BodyResponse` (an open response in the shape
otad.delta.fetch reads chunks through) and `PlainOpener` (GETs with no credentials, for a chunk
URL written in a signed sw-description). Sending requests with the hawkBit session, auth and TLS
is the DDI client's (otad.hawkbit.ddi), which reads its bodies with the same functions.
"""

from __future__ import annotations

import http.client
from typing import Callable, Mapping, Optional, Union

import requests
import urllib3

from otad.errors import MalformedResponse, Rejected, ServerUnavailable

RANGE_PIECE_BYTES = 256 << 10  # chunk requests: a piece is parsed as it comes, smaller pieces hold less
CHUNK_BYTES = 1 << 20  # requests' iter_content default is 1 byte (0.4 MB/s); 1 MiB runs at ~1 GB/s

# What a broken or stalled body raises, wrapped by requests or (on some versions) raw from urllib3.
BODY_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def body_reader(response: requests.Response, chunk_bytes: int) -> Callable[[], bytes]:
    """A function returning the next piece of the body (b"" at its end), at most `chunk_bytes`.

    read1 returns what one socket read brings, so bytes that arrived before a drop or a stall
    are delivered instead of being lost inside a larger read (urllib3 2's read(n) and
    iter_content drop them with the IncompleteRead). urllib3 1.26 has no read1: read(n) with
    n <= 64 KiB bounds that loss. Callers refuse content coding, so raw bytes are the file's bytes.
    """
    raw = response.raw
    if hasattr(raw, "read1"):
        return lambda: bytes(raw.read1(chunk_bytes, decode_content=False))
    small = min(chunk_bytes, 64 * 1024)
    return lambda: bytes(raw.read(small, decode_content=False))


class BodyResponse:
    """An open response read in pieces; a broken body raises ServerUnavailable."""

    def __init__(self, response: requests.Response, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._response = response
        self._body = body_reader(response, chunk_bytes)

    def read(self) -> bytes:
        try:
            return self._body()
        except BODY_ERRORS as exc:
            raise ServerUnavailable(f"body broke off ({type(exc).__name__}: {exc})", self._response.url) from exc

    def close(self) -> None:
        self._response.close()


class PlainOpener:
    """GETs with no credentials (a static chunk URL: the hawkBit token is never sent to it); a
    status other than 2xx and 416 becomes its ServerError, like the DDI client's."""

    def __init__(self, *, ca_file: Optional[str] = None, timeout_s: float = 60.0) -> None:
        self._session = requests.Session()
        self._verify: Union[bool, str] = ca_file if ca_file else True
        self._timeout = timeout_s

    def __call__(self, url: str, headers: Mapping[str, str]) -> BodyResponse:
        try:
            resp = self._session.get(url, headers=dict(headers), stream=True, timeout=(self._timeout, self._timeout),
                                     verify=self._verify)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise MalformedResponse(f"unusable URL: {exc}", url) from exc
        except requests.RequestException as exc:
            raise ServerUnavailable(f"no answer ({type(exc).__name__}: {exc})", url) from exc
        if resp.status_code < 300 or resp.status_code == 416:
            return BodyResponse(resp, RANGE_PIECE_BYTES)
        resp.close()
        kind = ServerUnavailable if resp.status_code >= 500 or resp.status_code == 429 else Rejected
        raise kind(f"HTTP {resp.status_code} {resp.reason or ''}".rstrip(), url, resp.status_code)

    def close(self) -> None:
        self._session.close()
