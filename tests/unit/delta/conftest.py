"""Shared by the delta tests: the opener that sends chunk requests through otad's DDI client.

`ddi_opener` is the stage-2 hook (docs: /work/notes/delta-design.md) written as test code until
hawkbit/ddi.py grows it: requests go through DdiClient's own session, auth header, TLS settings
and status-to-error mapping, and bodies are read the way download.py reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import pytest
import requests

from otad.delta.fetch import Opener, RangeResponse
from otad.errors import ServerUnavailable
from otad.hawkbit.ddi import DdiClient, HawkbitSettings
from otad.hawkbit.download import _BODY_ERRORS, CHUNK_BYTES, _body_reader
from tests import delta_fixtures
from tests.delta_fixtures import DeltaFixture


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> DeltaFixture:
    """The "small" fixture (24 MiB ext4 v1/v2, zck of v2), built once per session."""
    return delta_fixtures.build(tmp_path_factory.mktemp("delta") / "small", "small")


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


@pytest.fixture
def no_sleep() -> Callable[[float], None]:
    waits = []

    def sleep(s: float) -> None:
        waits.append(s)
    sleep.waits = waits  # type: ignore[attr-defined]
    return sleep
