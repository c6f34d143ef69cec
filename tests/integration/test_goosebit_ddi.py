"""The DDI client and the resumable download against a real goosebit 0.2.12.

Each test uses its own controller id and hardware revision, so rollouts of one test are never
compatible with another test's device on the shared server. What goosebit lacks (cancel,
installedBase, 304, 410, md5/sha256) is covered against DdiFake in tests/unit/hawkbit.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Tuple

import pytest

from otad.errors import RestartRequired
from otad.hawkbit.ddi import ActionLink, Artifact, AuthError, DdiClient, Deployment, HawkbitSettings, NotFound
from otad.hawkbit.download import ResumableDownload
from tests.goosebit import Goosebit, goosebit, start_goosebit, write_swu  # noqa: F401 - fixture
from tests.hawkbit_fakes import ConnPlan, FaultProxy

_ids = itertools.count(1)
PAYLOAD = os.urandom(1 << 20) + bytes(300_000)


def new_device(goosebit: Goosebit) -> Tuple[str, str, DdiClient]:
    """A fresh controller id, a hardware revision only it has, and a client for it."""
    n = next(_ids)
    cid, rev = f"otad-dev-{n}", f"9.{n}"
    client = DdiClient(HawkbitSettings(url=goosebit.base, controller_id=cid, read_timeout_s=5))
    return cid, rev, client


@pytest.fixture
def controller(goosebit: Goosebit) -> Iterator[Tuple[str, str, DdiClient]]:
    cid, rev, client = new_device(goosebit)
    with client:
        yield cid, rev, client


def register(client: DdiClient, rev: str, sw_version: str = "1.0.0") -> None:
    root = client.poll()
    assert root.config_data_requested and root.deployment is None
    client.config_data({"hw_revision": rev, "sw_version": sw_version})


def offer(goosebit: Goosebit, tmp_path: Path, client: DdiClient, rev: str,
          version: str = "1.0.1") -> Tuple[int, bytes, Deployment]:
    """Upload a bundle for `rev`, roll it out, poll: (software id, bundle bytes, deployment)."""
    data = write_swu(tmp_path / f"update-{rev}.swu", version, rev, PAYLOAD)
    software_id = goosebit.upload(tmp_path / f"update-{rev}.swu")
    goosebit.rollout(software_id)
    link = client.poll().deployment
    assert link is not None, "goosebit offered nothing after the rollout"
    return software_id, data, client.deployment(link)


def test_register_then_a_rollout_is_offered_and_parsed(goosebit: Goosebit, controller: Tuple[str, str, DdiClient],
                                                       tmp_path: Path) -> None:
    cid, rev, client = controller
    root = client.poll()
    assert root.sleep_s == 10 and root.config_data_requested  # goosebit: 10 s until registered
    client.config_data({"hw_revision": rev, "sw_version": "1.0.0"})
    root = client.poll()
    assert (root.sleep_s, root.config_data_requested, root.deployment) == (1, False, None)
    assert goosebit.device(cid)["hardware"]["revision"] == rev

    software_id, data, dep = offer(goosebit, tmp_path, client, rev)
    assert dep.action_id == str(software_id)
    assert (dep.download, dep.update, dep.maintenance_window) == ("forced", "forced", None)
    art = dep.swu_artifact()
    assert dep.chunks[0].part == "os" and dep.chunks[0].version == "1.0.1"
    assert art == Artifact(f"update-{rev}.swu", len(data), None, hashlib.sha1(data).hexdigest(), None,
                           f"{goosebit.ddi}/{cid}/download")
    assert art.strongest_hash() == ("sha1", hashlib.sha1(data).hexdigest())


def test_download_through_a_proxy_that_drops_twice_gives_the_exact_bytes(
        goosebit: Goosebit, controller: Tuple[str, str, DdiClient], tmp_path: Path) -> None:
    _, rev, client = controller
    register(client, rev)
    _, data, dep = offer(goosebit, tmp_path, client, rev)
    art = dep.swu_artifact()
    plans = [ConnPlan(drop_after=300_000), ConnPlan(drop_after=500_000)]  # bytes incl. response headers
    with FaultProxy(goosebit.base, plans) as proxy:
        dl = ResumableDownload(client, replace(art, download_url=proxy.rewrite(art.download_url)),
                               sleep=lambda s: None)
        with dl:
            got = dl.read(-1)
        assert proxy.connections == 3
        # Resumed, not restarted: about one artifact's worth of bytes crossed the proxy.
        assert proxy.bytes_down < len(data) + 3 * 1024
    assert got == data and dl.verified


def test_a_stall_through_the_proxy_is_resumed_after_the_read_timeout(
        goosebit: Goosebit, tmp_path: Path) -> None:
    cid, rev, _ = new_device(goosebit)
    with DdiClient(HawkbitSettings(url=goosebit.base, controller_id=cid, read_timeout_s=0.5)) as client:
        register(client, rev)
        _, data, dep = offer(goosebit, tmp_path, client, rev)
        art = dep.swu_artifact()
        with FaultProxy(goosebit.base, [ConnPlan(stall_after=400_000, stall_s=3)]) as proxy:
            with ResumableDownload(client, replace(art, download_url=proxy.rewrite(art.download_url)),
                                   sleep=lambda s: None) as dl:
                got = dl.read(-1)
            assert proxy.connections == 2
    assert got == data and dl.verified


def test_goosebit_serves_ranges_416_and_a_stale_if_range_as_a_full_200(
        goosebit: Goosebit, controller: Tuple[str, str, DdiClient], tmp_path: Path) -> None:
    _, rev, client = controller
    register(client, rev)
    _, data, dep = offer(goosebit, tmp_path, client, rev)
    art = dep.swu_artifact()
    with client.open_artifact(art, offset=1000) as resp:
        assert (resp.status, resp.start, resp.total_size) == (206, 1000, len(data))
        # goosebit's ETag is Starlette's md5 of mtime and size, not hawkBit's sha1 of the file
        assert resp.etag and resp.etag.strip('"') != hashlib.sha1(data).hexdigest()
    with client.open_artifact(art, offset=len(data)) as resp:
        assert resp.complete
    with pytest.raises(RestartRequired):
        ResumableDownload(client, art, start_offset=1000, if_range='"stale"').read(1)


def test_feedback_proceeding_then_closed_success_finishes_and_sets_sw_version(
        goosebit: Goosebit, controller: Tuple[str, str, DdiClient], tmp_path: Path) -> None:
    cid, rev, client = controller
    register(client, rev)
    software_id, _, dep = offer(goosebit, tmp_path, client, rev, version="2.3.4")
    client.feedback(dep.action_id, "proceeding", "none", ["Downloaded 40%"], progress=(2, 5), clock_ok=True)
    state = goosebit.device(cid)
    assert (state["last_state"], state["progress"], state["sw_version"]) == ("Running", 40, "1.0.0")
    assert client.poll().deployment is not None  # the link stays while Running

    client.feedback(dep.action_id, "closed", "success", ["installed, trial boot ok"], clock_ok=False)
    state = goosebit.device(cid)
    assert (state["last_state"], state["sw_version"]) == ("Finished", "2.3.4")
    assert "trial boot ok" in goosebit.device_log(cid)
    root = client.poll()
    assert root.deployment is None
    stale = ActionLink(dep.action_id, f"{goosebit.ddi}/{cid}/deploymentBase/{software_id}")
    with pytest.raises(NotFound, match="null"):  # goosebit: 200 `null` when idle
        client.deployment(stale)
    client.feedback(dep.action_id, "closed", "success", clock_ok=False)  # goosebit: 200, never 410


def test_feedback_closed_failure_puts_the_device_in_error_until_forced(
        goosebit: Goosebit, controller: Tuple[str, str, DdiClient], tmp_path: Path) -> None:
    cid, rev, client = controller
    register(client, rev)
    _, _, dep = offer(goosebit, tmp_path, client, rev)
    client.feedback(dep.action_id, "closed", "failure", ["sha1 mismatch"], code=3, clock_ok=False)
    state = goosebit.device(cid)
    assert (state["last_state"], state["sw_version"]) == ("Error", "1.0.0")
    assert client.poll().deployment is None  # no offers while in Error
    goosebit.force_update(cid)
    link = client.poll().deployment
    assert link is not None and link.id == dep.action_id  # the action id (= software id) is reused


def test_goosebit_device_auth_reads_the_target_token(tmp_path_factory: pytest.TempPathFactory,
                                                     tmp_path: Path) -> None:
    env = {"GOOSEBIT_DEVICE_AUTH__ENABLE": "true", "GOOSEBIT_DEVICE_AUTH__MODE": "strict"}
    with start_goosebit(tmp_path_factory.mktemp("goosebit-auth"), env) as server:
        server.add_device("dev-auth", auth_token="tok-0123456789")
        token = tmp_path / "token"
        token.write_text("tok-0123456789\n")
        settings = HawkbitSettings(url=server.base, controller_id="dev-auth", auth="target_token",
                                   token_file=str(token))
        with DdiClient(settings) as client:
            register(client, "1.0")
            _, data, dep = offer(server, tmp_path, client, "1.0")
            with ResumableDownload(client, dep.swu_artifact()) as dl:
                assert dl.read(-1) == data and dl.verified  # /download is guarded too
            token.write_text("wrong-token\n")
            with pytest.raises(AuthError, match="HTTP 401"):
                client.poll()
        token.write_text("tok-0123456789\n")
        with DdiClient(replace(settings, auth="gateway_token")) as client:
            with pytest.raises(AuthError):  # goosebit reads only TargetToken
                client.poll()
