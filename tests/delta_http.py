"""Chunk requests through otad's DDI client, for the delta tests and the benchmark's device process.

Requests go through DdiClient.open_url: its own session, auth header, TLS settings and
status-to-error mapping, bodies read as download.py reads them. No pytest here: the benchmark's
device process imports this and its peak RSS must be a device's.
"""

from __future__ import annotations

from otad.delta.fetch import Opener
from otad.hawkbit.ddi import DdiClient, HawkbitSettings


def ddi_opener(client: DdiClient) -> Opener:
    """Chunk requests as the daemon sends them."""
    return client.open_url


def client_for(url: str, **settings: object) -> DdiClient:
    return DdiClient(HawkbitSettings(url=url.split("/file")[0], controller_id="dev-01", read_timeout_s=10.0,
                                     **settings))  # type: ignore[arg-type]
