"""Chunk requests through otad's DDI client, for the delta tests and the benchmark's device process.

The stage-2 hook (docs/delta.md §5) written as test code until hawkbit/ddi.py grows it:
requests go through DdiClient's own session, auth header, TLS settings and status-to-error
mapping, and bodies are read the way download.py reads them. No pytest here: the benchmark's
device process imports this and its peak RSS must be a device's.
"""

from __future__ import annotations

from typing import Callable, Mapping

import requests

from otad.delta.fetch import Opener, RangeResponse
from otad.errors import ServerUnavailable
from otad.hawkbit.ddi import DdiClient, HawkbitSettings
from otad.hawkbit.download import _BODY_ERRORS, CHUNK_BYTES, _body_reader


class _DdiResponse:
    def __init__(self, resp: requests.Response) -> None:
        self.status = resp.status_code
        self.headers = resp.headers
        self._resp = resp
        self._body: Callable[[], bytes] = _body_reader(resp, CHUNK_BYTES)

    def read(self) -> bytes:
        try:
            return self._body()
        except _BODY_ERRORS as exc:
            raise ServerUnavailable(f"body broke off ({type(exc).__name__}: {exc})", self._resp.url) from exc

    def close(self) -> None:
        self._resp.close()


def ddi_opener(client: DdiClient) -> Opener:
    def open_url(url: str, headers: Mapping[str, str]) -> RangeResponse:
        resp = client._request("GET", url, headers={"Accept": "application/octet-stream, */*", **headers},
                               download=True)
        return _DdiResponse(resp)
    return open_url


def client_for(url: str, **settings: object) -> DdiClient:
    return DdiClient(HawkbitSettings(url=url.split("/file")[0], controller_id="dev-01", read_timeout_s=10.0,
                                     **settings))  # type: ignore[arg-type]
