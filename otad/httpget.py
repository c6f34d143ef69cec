"""HTTP GETs of file bodies: a body read in pieces as every download reads it, and the plain
opener of chunk requests to a static URL.

Owns `body_reader` (what one socket read brings, never lost in a larger read), which exceptions
mean that a body broke off (BODY_ERRORS), `BodyResponse` (an open response in the shape
otad.delta.fetch reads chunks through) and `PlainOpener` (GETs with no credentials, for a chunk
URL written in a signed sw-description). Sending requests with the hawkBit session, auth and TLS
is the DDI client's (otad.hawkbit.ddi, on requests), which reads its bodies with the same functions.

`PlainOpener` sends through urllib3, the library requests sends through, without requests on
top: `otad install` of a delta bundle needs this one GET, and with Debian 12's packages
`import requests` costs 6.8 MB of RSS more than urllib3 (chardet, charset_normalizer, idna; a
Pi has 512 MB). What a user sets keeps requests' meaning: http_proxy, https_proxy, all_proxy and
no_proxy as urllib.request reads them (requests' own reading, but for CIDR entries in no_proxy),
TLS verified against `ca_file`, else REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else certifi's bundle
(Debian's is the system store), at most 30 redirects, one timeout for connect and read.
"""

from __future__ import annotations

import http.client
import os
import urllib.request
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional
from urllib.parse import urlsplit

import urllib3

from otad.errors import MalformedResponse, Rejected, ServerUnavailable

if TYPE_CHECKING:  # the DDI client's responses; this module does not load requests
    import requests

CHUNK_BYTES = 1 << 20  # requests' iter_content default is 1 byte (0.4 MB/s); 1 MiB runs at ~1 GB/s
RANGE_PIECE_BYTES = 256 << 10  # chunk requests: a piece is parsed as it comes, smaller pieces hold less
MAX_REDIRECTS = 30  # requests' Session.max_redirects

# What a broken or stalled body raises: urllib3's and http.client's errors, and OSError (which
# requests' RequestException, raised when a body is read through requests, is a subclass of).
BODY_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


def raw_reader(raw: Any, chunk_bytes: int) -> Callable[[], bytes]:
    """A function returning the next piece of urllib3 response `raw`'s body (b"" at its end),
    at most `chunk_bytes`.

    read1 returns what one socket read brings, so bytes that arrived before a drop or a stall
    are delivered instead of being lost inside a larger read (urllib3 2's read(n) and
    iter_content drop them with the IncompleteRead). urllib3 1.26 has no read1: read(n) with
    n <= 64 KiB bounds that loss. Callers refuse content coding, so raw bytes are the file's bytes.
    """
    if hasattr(raw, "read1"):
        return lambda: bytes(raw.read1(chunk_bytes, decode_content=False))
    small = min(chunk_bytes, 64 * 1024)
    return lambda: bytes(raw.read(small, decode_content=False))


def body_reader(response: "requests.Response", chunk_bytes: int) -> Callable[[], bytes]:
    """`raw_reader` of a requests response."""
    return raw_reader(response.raw, chunk_bytes)


class BodyResponse:
    """An open response read in pieces; a broken body raises ServerUnavailable."""

    def __init__(self, response: "requests.Response", chunk_bytes: int = CHUNK_BYTES) -> None:
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers
        self._url: str = response.url
        self._close: Callable[[], None] = response.close
        self._body = body_reader(response, chunk_bytes)

    @classmethod
    def pooled(cls, raw: Any, url: str, chunk_bytes: int = CHUNK_BYTES) -> "BodyResponse":
        """The same over a urllib3 response (`raw`) to `url`."""
        self = cls.__new__(cls)
        self.status, self.headers, self._url = raw.status, raw.headers, url
        self._close = lambda: _close_pooled(raw)
        self._body = raw_reader(raw, chunk_bytes)
        return self

    def read(self) -> bytes:
        try:
            return self._body()
        except BODY_ERRORS as exc:
            raise ServerUnavailable(f"body broke off ({type(exc).__name__}: {exc})", self._url) from exc

    def close(self) -> None:
        self._close()


def _close_pooled(raw: Any) -> None:
    """As requests closes a streamed response: the connection is dropped unless its body was read."""
    if not raw.closed and raw.length_remaining:
        raw.close()
    raw.release_conn()


class PlainOpener:
    """GETs with no credentials (a static chunk URL: the hawkBit token is never sent to it); a
    status other than 2xx and 416 becomes its ServerError, like the DDI client's."""

    def __init__(self, *, ca_file: Optional[str] = None, timeout_s: float = 60.0) -> None:
        env = os.environ
        self._ca = ca_file or env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or _certifi_bundle()
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        # No retries (requests' adapters make none): a failure is the fetcher's to retry or fall back from.
        self._retries = urllib3.Retry(total=None, connect=0, read=False, redirect=MAX_REDIRECTS, status=0, other=0,
                                      raise_on_redirect=True, raise_on_status=False)
        self._managers: Dict[str, urllib3.PoolManager] = {}  # by proxy URL ("": none)

    def __call__(self, url: str, headers: Mapping[str, str]) -> BodyResponse:
        try:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise MalformedResponse("unusable URL: expected http:// or https:// and a host", url)
            resp = self._manager(parts.scheme, parts.hostname).urlopen(  # type: ignore[no-untyped-call]
                "GET", url, headers=dict(headers), preload_content=False, decode_content=False,
                retries=self._retries, timeout=self._timeout)
        except (urllib3.exceptions.LocationValueError, ValueError) as exc:
            raise MalformedResponse(f"unusable URL: {exc}", url) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise ServerUnavailable(f"no answer ({type(exc).__name__}: {exc})", url) from exc
        if resp.status < 300 or resp.status == 416:
            return BodyResponse.pooled(resp, url, RANGE_PIECE_BYTES)
        _close_pooled(resp)
        kind = ServerUnavailable if resp.status >= 500 or resp.status == 429 else Rejected
        raise kind(f"HTTP {resp.status} {resp.reason or ''}".rstrip(), url, resp.status)

    def _manager(self, scheme: str, host: str) -> urllib3.PoolManager:
        proxies = urllib.request.getproxies()
        proxy = "" if urllib.request.proxy_bypass(host) else (proxies.get(scheme) or proxies.get("all") or "")
        if proxy and "://" not in proxy:
            proxy = "http://" + proxy  # as requests reads "proxy:3128"
        manager = self._managers.get(proxy)
        if manager is None:
            settings: Dict[str, Any] = {"cert_reqs": "CERT_REQUIRED", "ca_certs": self._ca}
            if proxy:
                auth = urllib3.util.parse_url(proxy).auth
                headers = urllib3.make_headers(proxy_basic_auth=auth) if auth else None  # type: ignore[no-untyped-call]
                manager = urllib3.ProxyManager(proxy, proxy_headers=headers, **settings)
            else:
                manager = urllib3.PoolManager(**settings)
            self._managers[proxy] = manager
        return manager

    def close(self) -> None:
        for manager in self._managers.values():
            manager.clear()  # type: ignore[no-untyped-call]


def _certifi_bundle() -> Optional[str]:
    try:
        import certifi  # requests' default bundle (Debian's certifi names the system store)
    except ImportError:
        return None  # urllib3 then verifies against the system's default store
    return str(certifi.where())
