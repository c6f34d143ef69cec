"""The DDI client against DdiFake: JSON shapes, status codes, auth, feedback bodies, artifact ranges."""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Type

import pytest
import requests

from otad.errors import ConfigError
from otad.hawkbit.ddi import (ActionLink, Artifact, AuthError, Chunk, Conflict, DdiClient, Deployment,
                              Forbidden, Gone, HawkbitSettings, InvalidConfigData, MalformedResponse, NotFound,
                              QuotaExceeded, Rejected, ServerError, ServerUnavailable, UnsupportedDeployment,
                              trim_details)
from tests.hawkbit_fakes import DdiFake

TOKEN = "s3cr3t-t0ken-value-4711"
CLOCK = 1_778_501_594.0  # 2026-05-11T12:13:14Z
ARTIFACT = bytes(range(256)) * 40


@pytest.fixture
def fake() -> Iterator[DdiFake]:
    with DdiFake() as f:
        yield f
    assert not f.server_errors, f.server_errors[0]


MakeClient = Callable[..., DdiClient]


@pytest.fixture
def make_client(fake: DdiFake) -> Iterator[MakeClient]:
    clients: List[DdiClient] = []

    def make(**kw: Any) -> DdiClient:
        settings = HawkbitSettings(**{"url": fake.url, "controller_id": fake.controller_id,
                                      "read_timeout_s": 2.0, **kw})
        client = DdiClient(settings, clock=lambda: CLOCK)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client: MakeClient) -> DdiClient:
    return make_client()


# --- root poll --------------------------------------------------------------------------------

def test_poll_reads_sleep_and_the_deployment_link_with_its_action_id(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    root = client.poll()
    assert root.sleep_s == 1
    assert root.deployment == ActionLink("8", f"{fake.base}/deploymentBase/8?c=0")
    assert root.cancel is None and root.confirmation is None and root.installed_base is None
    assert root.config_data_requested


def test_poll_accepts_omitted_and_empty_links(fake: DdiFake, client: DdiClient) -> None:
    fake.config_data_requested = False
    assert client.poll().deployment is None  # hawkBit: no _links at all
    fake.omit_empty_links = False
    fake.sleep = "PT26H"
    root = client.poll()  # goosebit: "_links": {}
    assert (root.deployment, root.config_data_requested, root.sleep_s) == (None, False, 93600)


def test_poll_sends_if_none_match_and_reuses_the_last_root_on_304(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    first = client.poll()
    assert client.poll() is first
    sent = [r for r in fake.requests if r.endpoint == "root"]
    assert "If-None-Match" not in sent[0].headers
    assert sent[1].headers["If-None-Match"] == fake.root_etag()
    fake.cancel("8")  # the root changes: a new body, not the cached one
    assert client.poll().cancel == ActionLink("8", f"{fake.base}/cancelAction/8")


def test_poll_shows_cancel_and_installed_base_links(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    client.feedback("8", "closed", "success", clock_ok=False)
    fake.offer("9", ARTIFACT)
    fake.cancel("9")
    root = client.poll()
    assert root.cancel is not None and root.cancel.id == "9" and root.deployment is None
    assert root.installed_base == f"{fake.base}/installedBase/8"
    assert client.installed_base(root.installed_base).action_id == "8"
    assert client.cancel_action(root.cancel).stop_id == "9"


# --- status codes -----------------------------------------------------------------------------

@pytest.mark.parametrize("status, body, error", [
    (401, b"", AuthError), (403, b"", Forbidden), (404, b"", NotFound), (409, b"", Conflict),
    (410, b"", Gone), (400, b'{"errorCode":"hawkbit.server.error.rest.param.invalid"}', Rejected),
    (405, b"", Rejected), (422, b'{"detail":"bad"}', Rejected), (500, b"boom", ServerUnavailable),
    (502, b"", ServerUnavailable), (503, b"", ServerUnavailable), (429, b"", ServerUnavailable),
    (429, b'{"errorCode":"hawkbit.server.error.quota.tooManyEntries","message":"quota"}', QuotaExceeded),
])
def test_each_status_maps_to_its_error_with_url_and_status(fake: DdiFake, client: DdiClient, status: int,
                                                           body: bytes, error: Type[ServerError]) -> None:
    fake.fault("root", status=status, body=body)
    with pytest.raises(error) as err:
        client.poll()
    assert type(err.value) is error
    assert err.value.status == status and err.value.url == fake.base
    assert f"HTTP {status}" in str(err.value) and fake.base in str(err.value)


def test_429_and_503_carry_retry_after_seconds_or_date(fake: DdiFake, client: DdiClient) -> None:
    fake.fault("root", status=429, headers={"Retry-After": "7"})
    with pytest.raises(ServerUnavailable) as err:
        client.poll()
    assert err.value.retry_after_s == 7
    fake.fault("root", status=503, headers={"Retry-After": email.utils.formatdate(CLOCK + 42, usegmt=True)})
    with pytest.raises(ServerUnavailable) as err:
        client.poll()
    assert err.value.retry_after_s == pytest.approx(42)
    fake.fault("root", status=503)
    with pytest.raises(ServerUnavailable) as err:
        client.poll()
    assert err.value.retry_after_s is None


def test_no_server_is_server_unavailable_without_status() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    client = DdiClient(HawkbitSettings(url=f"http://127.0.0.1:{port}", controller_id="dev-01"))
    with pytest.raises(ServerUnavailable) as err:
        client.poll()
    assert err.value.status is None and "no answer" in str(err.value)


def test_a_stalled_answer_raises_after_the_read_timeout(fake: DdiFake, make_client: MakeClient) -> None:
    fake.fault("root", stall_s=5, stall_after=10)
    with pytest.raises(ServerUnavailable, match="broke off"):
        make_client(read_timeout_s=0.3).poll()


def test_an_answer_cut_short_of_its_content_length_is_server_unavailable(fake: DdiFake,
                                                                        client: DdiClient) -> None:
    fake.fault("root", content_length=500)
    with pytest.raises(ServerUnavailable, match="broke off"):
        client.poll()


# --- malformed JSON -----------------------------------------------------------------------------

def test_truncated_json_is_malformed_naming_the_url(fake: DdiFake, client: DdiClient) -> None:
    fake.fault("root", body=b'{"config":{"polling":')
    with pytest.raises(MalformedResponse, match="expected JSON") as err:
        client.poll()
    assert err.value.url == fake.base


@pytest.mark.parametrize("body, field", [
    ({"config": {"polling": {"sleep": 5}}}, "config.polling.sleep: expected a string, got a number"),
    ({"config": {"polling": {"sleep": "soon"}}}, "config.polling.sleep: expected HH:MM:SS"),
    ({"config": {}}, "config.polling: expected an object, got null"),
    ({"config": {"polling": {"sleep": "00:01:00"}}, "_links": []}, "_links: expected an object, got an array"),
    ({"config": {"polling": {"sleep": "00:01:00"}}, "_links": {"deploymentBase": {"href": 3}}},
     "_links.deploymentBase.href: expected a string"),
    ({"config": {"polling": {"sleep": "00:01:00"}}, "_links": {"cancelAction": "x"}},
     "_links.cancelAction: expected an object"),
    ([], "(body): expected an object, got an array"),
])
def test_malformed_root_fields_are_named(fake: DdiFake, client: DdiClient, body: Any, field: str) -> None:
    fake.fault("root", body=json.dumps(body).encode())
    with pytest.raises(MalformedResponse) as err:
        client.poll()
    assert str(err.value).startswith(f"{fake.base}: {field}")


def deployment_doc(fake: DdiFake, action_id: str = "8") -> Dict[str, Any]:
    fake.offer(action_id, ARTIFACT)
    return fake.deployment_body(fake.actions[action_id])


def mutate(doc: Dict[str, Any], path: str, value: Any) -> Dict[str, Any]:
    """Set (or with value=KeyError, delete) the dotted path `a.b[0].c` in doc."""
    keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
    node: Any = doc
    for k in keys[:-1]:
        node = node[k]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


A0 = "deployment.chunks[0].artifacts[0]"


@pytest.mark.parametrize("path, value, message", [
    (f"{A0}.size", "5120", f"{A0}.size: expected an integer >= 0, got '5120'"),
    (f"{A0}.size", -1, f"{A0}.size: expected an integer >= 0, got -1"),
    (f"{A0}.size", True, f"{A0}.size: expected an integer >= 0, got True"),
    (f"{A0}.hashes.sha1", "xyz", f"{A0}.hashes.sha1: expected 40 hex digits, got 'xyz'"),
    (f"{A0}.hashes.sha256", 5, f"{A0}.hashes.sha256: expected a string, got a number"),
    (f"{A0}.hashes", KeyError, f"{A0}.hashes: expected an object, got null"),
    (f"{A0}._links", {}, f"{A0}._links: expected a 'download' or 'download-http' link, got []"),
    (f"{A0}._links", {"md5sum": {"href": "http://h/x"}}, f"{A0}._links: expected a 'download' or"),
    (f"{A0}._links.download.href", "ftp://h/x", f"{A0}._links.download.href: expected an http(s) URL"),
    (f"{A0}.filename", None, f"{A0}.filename: expected a string, got null"),
    ("deployment.chunks[0].artifacts", {}, "deployment.chunks[0].artifacts: expected an array, got an object"),
    ("deployment.chunks[0].version", 1.2, "deployment.chunks[0].version: expected a string, got a number"),
    ("deployment.chunks[0].metadata", True, "deployment.chunks[0].metadata: expected an array, got a boolean"),
    ("deployment.chunks", KeyError, "deployment.chunks: expected an array, got null"),
    ("deployment.download", "maybe", "deployment.download: expected one of skip, attempt, forced, got 'maybe'"),
    ("deployment.update", None, "deployment.update: expected a string, got null"),
    ("deployment.maintenanceWindow", "open", "deployment.maintenanceWindow: expected one of available"),
    ("deployment", "x", "deployment: expected an object, got a string"),
    ("id", "", "id: expected a non-empty id"),
    ("id", [], "id: expected a string, got an array"),
])
def test_malformed_deployment_fields_are_named_with_their_path(fake: DdiFake, client: DdiClient, path: str,
                                                               value: Any, message: str) -> None:
    doc = mutate(deployment_doc(fake), path, value)
    fake.fault("deploymentBase", body=json.dumps(doc).encode())
    link = client.poll().deployment
    assert link is not None
    with pytest.raises(MalformedResponse) as err:
        client.deployment(link)
    assert str(err.value).startswith(f"{link.href}: {message}")
    assert err.value.url == link.href


def test_unknown_fields_are_ignored_and_a_numeric_id_accepted(fake: DdiFake, client: DdiClient) -> None:
    doc = deployment_doc(fake)
    doc["id"] = 8
    doc["future"] = {"x": [1]}
    doc["deployment"]["chunks"][0]["encrypted"] = False
    doc["deployment"]["chunks"][0]["artifacts"][0]["newField"] = 1
    fake.fault("deploymentBase", body=json.dumps(doc).encode())
    link = client.poll().deployment
    assert link is not None and client.deployment(link).action_id == "8"


# --- deployment -----------------------------------------------------------------------------------

def test_deployment_is_parsed_with_hashes_window_and_the_download_link(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT, download="forced", update="skip", window="unavailable")
    link = client.poll().deployment
    assert link is not None
    dep = client.deployment(link)
    art = Artifact("update.swu", len(ARTIFACT), hashlib.sha256(ARTIFACT).hexdigest(),
                   hashlib.sha1(ARTIFACT).hexdigest(), hashlib.md5(ARTIFACT).hexdigest(),
                   fake.artifact_url("8", "download"))
    assert dep == Deployment("8", "forced", "skip", "unavailable",
                             (Chunk("os", "1.0.1", "rootfs", (art,), (("k", "v"),)),))
    assert dep.swu_artifact() == art
    assert art.strongest_hash() == ("sha256", art.sha256)
    assert fake.requests[-1].path == "/DEFAULT/controller/v1/dev-01/deploymentBase/8?c=0"  # href verbatim


def test_download_http_is_taken_when_there_is_no_download_link(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT, links=("download-http",), hashes=("sha1",))
    link = client.poll().deployment
    assert link is not None
    art = client.deployment(link).swu_artifact()
    assert art.download_url.endswith("?via=http")
    assert (art.sha256, art.md5, art.strongest_hash()) == (None, None, ("sha1", hashlib.sha1(ARTIFACT).hexdigest()))


def test_goosebit_null_deployment_is_not_found(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    fake.fault("deploymentBase", body=b"null")
    link = client.poll().deployment
    assert link is not None
    with pytest.raises(NotFound, match="null") as err:
        client.deployment(link)
    assert err.value.status == 200


def test_a_canceled_deployment_is_not_found(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    link = client.poll().deployment
    assert link is not None
    fake.cancel("8")
    with pytest.raises(NotFound):
        client.deployment(link)


@pytest.mark.parametrize("names, message", [
    (["rootfs.img"], "found 0 among ['rootfs.img']"),
    (["a.swu", "b.SWU"], "found 2 among ['a.swu', 'b.SWU']"),
    ([], "found 0 among []"),
])
def test_swu_artifact_requires_exactly_one_swu(names: List[str], message: str) -> None:
    arts = tuple(Artifact(n, 1, None, "0" * 40, None, "http://h/" + n) for n in names)
    dep = Deployment("8", "forced", "forced", None, (Chunk("os", "1", "n", arts),))
    with pytest.raises(UnsupportedDeployment, match=r"expected exactly one \*\.swu artifact") as err:
        dep.swu_artifact()
    assert message in str(err.value) and "action 8" in str(err.value)


def test_swu_artifact_is_found_among_other_chunks_and_needs_a_hash() -> None:
    other = Chunk("bApp", "1", "app", (Artifact("app.tar", 1, None, None, "0" * 32, "http://h/a"),))
    swu = Artifact("update.swu", 1, None, None, None, "http://h/u")
    dep = Deployment("8", "forced", "forced", None, (other, Chunk("os", "1", "os", (swu,))))
    with pytest.raises(UnsupportedDeployment, match="'update.swu' has no sha256, sha1 or md5"):
        dep.swu_artifact()


# --- auth ---------------------------------------------------------------------------------------

@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    return path


@pytest.mark.parametrize("mode, scheme", [("target_token", "TargetToken"), ("gateway_token", "GatewayToken")])
def test_token_is_read_from_its_file_and_sent(fake: DdiFake, make_client: MakeClient, token_file: Path,
                                              mode: str, scheme: str) -> None:
    fake.auth = f"{scheme} {TOKEN}"
    make_client(auth=mode, token_file=str(token_file)).poll()
    assert fake.requests[-1].headers["Authorization"] == f"{scheme} {TOKEN}"


def test_a_rotated_token_file_is_picked_up_at_the_next_request(fake: DdiFake, make_client: MakeClient,
                                                               token_file: Path) -> None:
    client = make_client(auth="target_token", token_file=str(token_file))
    fake.auth = f"TargetToken {TOKEN}"
    client.poll()
    token_file.write_text("rotated-token\n")
    with pytest.raises(AuthError) as err:
        client.poll()
    assert "rotated-token" not in str(err.value)
    fake.auth = "TargetToken rotated-token"
    client.poll()


def test_the_token_appears_in_no_log_and_no_error(fake: DdiFake, make_client: MakeClient, token_file: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(auth="target_token", token_file=str(token_file))
    fake.auth = "TargetToken another"
    with pytest.raises(AuthError) as err:
        client.poll()
    fake.auth = None
    fake.offer("8", ARTIFACT)
    link = client.poll().deployment
    assert link is not None
    client.deployment(link)
    client.feedback("8", "proceeding", "none", ["Downloading"], clock_ok=False)
    assert caplog.records  # requests were logged, at DEBUG
    assert TOKEN not in caplog.text and TOKEN not in str(err.value)


def test_an_unreadable_or_empty_token_file_is_an_auth_error_naming_the_file(make_client: MakeClient,
                                                                            tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="missing: cannot read the token file"):
        make_client(auth="target_token", token_file=str(tmp_path / "missing")).poll()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AuthError, match="empty: expected one word of printable ASCII"):
        make_client(auth="target_token", token_file=str(tmp_path / "empty")).poll()


def test_downloads_are_authenticated_unless_download_without_token(fake: DdiFake, make_client: MakeClient,
                                                                   token_file: Path) -> None:
    fake.offer("8", ARTIFACT)
    art = fake_artifact(fake)
    with make_client(auth="target_token", token_file=str(token_file)).open_artifact(art):
        assert fake.requests[-1].headers["Authorization"] == f"TargetToken {TOKEN}"
    with make_client(auth="target_token", token_file=str(token_file),
                     download_without_token=True).open_artifact(art):
        assert "Authorization" not in fake.requests[-1].headers


def test_tls_settings_reach_requests(fake: DdiFake) -> None:
    seen: Dict[str, Any] = {}

    class Recording(requests.Session):
        def request(self, method: str, url: str, *args: Any, **kw: Any) -> requests.Response:  # type: ignore[override]
            seen.update(kw)
            return super().request(method, url, *args, **{**kw, "verify": True, "cert": None})

    settings = HawkbitSettings(url=fake.url, controller_id="dev-01", ca_file="/etc/otad/ca.pem",
                               client_cert="/etc/otad/c.pem", client_key="/etc/otad/k.pem",
                               connect_timeout_s=3, read_timeout_s=4)
    DdiClient(settings, session=Recording()).poll()
    assert seen["verify"] == "/etc/otad/ca.pem"
    assert seen["cert"] == ("/etc/otad/c.pem", "/etc/otad/k.pem")
    assert seen["timeout"] == (3, 4)
    assert DdiClient(HawkbitSettings(url=fake.url, controller_id="dev-01", verify_tls=False),
                     session=Recording()).poll() and seen["verify"] is False


@pytest.mark.parametrize("kw, message", [
    ({"url": "ftp://h"}, "hawkbit.url"), ({"url": "h:8080"}, "hawkbit.url"),
    ({"controller_id": ""}, "hawkbit.controller_id"), ({"controller_id": "a/b"}, "hawkbit.controller_id"),
    ({"auth": "cert"}, "hawkbit.auth"), ({"auth": "target_token"}, "hawkbit.token_file: required"),
    ({"client_key": "/k"}, "hawkbit.client_key"), ({"read_timeout_s": 0}, "hawkbit.read_timeout_s"),
])
def test_settings_are_checked(kw: Dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HawkbitSettings(**{"url": "https://h", "controller_id": "dev-01", **kw})


def test_the_base_url_quotes_tenant_and_controller() -> None:
    s = HawkbitSettings(url="https://h/prefix/", controller_id="dev:01?x#", tenant="DEFAULT")
    assert s.base_url == "https://h/prefix/DEFAULT/controller/v1/dev%3A01%3Fx%23"


# --- feedback -------------------------------------------------------------------------------------

def sent_feedback(fake: DdiFake) -> Dict[str, Any]:
    return fake.feedback_log[-1].body


def test_feedback_body_with_progress_code_and_a_trusted_clock(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    client.feedback("8", "proceeding", "none", ["Downloaded 40%"], progress=(2, 5), code=0, clock_ok=True)
    assert sent_feedback(fake) == {
        "id": "8", "time": "20260511T121314", "timestamp": 1778501594000,
        "status": {"execution": "proceeding", "result": {"finished": "none", "progress": {"cnt": 2, "of": 5}},
                   "code": 0, "details": ["Downloaded 40%"]}}
    assert fake.requests[-1].path.endswith("/deploymentBase/8/feedback")
    assert fake.requests[-1].headers["Content-Type"] == "application/json"


def test_feedback_without_a_trusted_clock_sends_no_time(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    client.feedback("8", "proceeding", "none", progress=(1, None), clock_ok=False)
    assert sent_feedback(fake) == {"id": "8", "status": {
        "execution": "proceeding", "result": {"finished": "none", "progress": {"cnt": 1, "of": None}}}}


def test_feedback_details_are_trimmed_to_hawkbit_quotas(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    client.feedback("8", "closed", "failure", ["x" * 300, "a\nb"] + [f"line {i}" for i in range(12)],
                    clock_ok=False)
    details = sent_feedback(fake)["status"]["details"]
    assert len(details) == 10 and all(len(d) <= 256 for d in details)
    assert details[0] == "x" * 253 + "..." and details[1:3] == ["a", "b"]
    assert details[-1] == "... 6 more lines not sent"


def test_trim_details_leaves_short_details_alone() -> None:
    assert trim_details(["one", "two"]) == ["one", "two"]
    assert trim_details([]) == []


def test_cancel_feedback_goes_to_cancel_action(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    fake.cancel("8")
    client.feedback("8", "closed", "success", ["cancelled before install"], cancel=True, clock_ok=False)
    assert fake.feedback_log[-1].kind == "cancelAction"
    assert fake.actions["8"].state == "canceled"


def test_feedback_to_a_closed_action_is_gone(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    client.feedback("8", "closed", "success", clock_ok=False)
    with pytest.raises(Gone) as err:
        client.feedback("8", "closed", "success", clock_ok=False)
    assert err.value.status == 410


def test_feedback_quota_429_is_quota_exceeded(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    fake.fault("deploymentBase/feedback", status=429,
               body=b'{"errorCode":"hawkbit.server.error.quota.tooManyEntries","message":"Quota exceeded"}')
    with pytest.raises(QuotaExceeded, match="Quota exceeded"):
        client.feedback("8", "proceeding", "none", clock_ok=False)


@pytest.mark.parametrize("execution, finished", [("done", "success"), ("closed", "ok")])
def test_feedback_rejects_unknown_states_before_sending(fake: DdiFake, client: DdiClient, execution: str,
                                                        finished: str) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        client.feedback("8", execution, finished, clock_ok=False)
    assert fake.requests == []


# --- configData -------------------------------------------------------------------------------

def test_config_data_is_put_with_mode_and_data(fake: DdiFake, client: DdiClient) -> None:
    client.config_data({"sw_version": "1.0.1", "hw_revision": "1.0"})
    assert fake.config_data_log == [{"mode": "merge", "data": {"sw_version": "1.0.1", "hw_revision": "1.0"}}]
    assert fake.requests[-1].method == "PUT" and fake.requests[-1].path.endswith("/dev-01/configData")
    assert client.poll().config_data_requested is False


@pytest.mark.parametrize("data, mode, message", [
    ({}, "merge", "expected 1..100 attributes, got 0"),
    ({f"k{i}": "v" for i in range(101)}, "merge", "got 101"),
    ({"a`b": "v"}, "merge", "key: expected 1..128 printable ASCII"),
    ({"k": "x~y"}, "merge", "value: expected"),
    ({"k": "v" * 129}, "merge", "value: expected"),
    ({"k" * 129: "v"}, "merge", "key: expected"),
    ({"k": "caf\u00e9"}, "merge", "value: expected"),
    ({"k": "a\nb"}, "merge", "value: expected"),
    ({"": "v"}, "merge", "key: expected"),
    ({"k": "v"}, "upsert", "mode: expected one of merge, replace, remove"),
])
def test_config_data_is_checked_before_sending(fake: DdiFake, client: DdiClient, data: Dict[str, str], mode: str,
                                               message: str) -> None:
    with pytest.raises(InvalidConfigData, match=message):
        client.config_data(data, mode)
    assert fake.requests == []


def test_config_data_accepts_the_limits() -> None:
    from otad.hawkbit.ddi import check_config_data
    check_config_data({"k" * 128: "v" * 128, "x": ""})


# --- artifacts ------------------------------------------------------------------------------------

def fake_artifact(fake: DdiFake, action_id: str = "8") -> Artifact:
    data = fake.actions[action_id].artifacts[0].data
    return Artifact("update.swu", len(data), hashlib.sha256(data).hexdigest(), None, None,
                    fake.artifact_url(action_id))


def test_open_artifact_without_offset_gets_the_whole_file(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    with client.open_artifact(fake_artifact(fake)) as resp:
        assert (resp.status, resp.start, resp.total_size) == (200, 0, len(ARTIFACT))
        assert resp.etag == '"%s"' % hashlib.sha1(ARTIFACT).hexdigest()
        assert resp.response.content == ARTIFACT
    sent = fake.requests[-1].headers
    assert "Range" not in sent and sent["Accept-Encoding"] == "identity"


def test_open_artifact_at_an_offset_resumes_with_range_and_if_range(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    etag = fake.actions["8"].artifacts[0].etag
    with client.open_artifact(fake_artifact(fake), offset=1000, if_range=etag) as resp:
        assert (resp.status, resp.start, resp.total_size) == (206, 1000, len(ARTIFACT))
        assert resp.response.content == ARTIFACT[1000:]
    assert fake.requests[-1].headers["Range"] == "bytes=1000-"
    assert fake.requests[-1].headers["If-Range"] == etag


def test_open_artifact_with_a_stale_if_range_gets_the_whole_file(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    with client.open_artifact(fake_artifact(fake), offset=1000, if_range='"stale"') as resp:
        assert (resp.status, resp.start) == (200, 0)


def test_open_artifact_at_the_end_is_416_complete(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    resp = client.open_artifact(fake_artifact(fake), offset=len(ARTIFACT))
    assert (resp.status, resp.total_size, resp.complete) == (416, len(ARTIFACT), True)
    resp = client.open_artifact(fake_artifact(fake), offset=len(ARTIFACT) + 5)
    assert (resp.status, resp.complete) == (416, False)


@pytest.mark.parametrize("header", ["bytes 999-10239/10240", "bytes 1000-10239", "items 1000-1/2"])
def test_open_artifact_rejects_a_range_that_does_not_start_at_the_offset(fake: DdiFake, client: DdiClient,
                                                                         header: str) -> None:
    fake.offer("8", ARTIFACT)
    fake.fault("artifact", status=206, body=b"x", headers={"Content-Range": header})
    with pytest.raises(MalformedResponse, match="Content-Range"):
        client.open_artifact(fake_artifact(fake), offset=1000)


def test_open_artifact_refuses_a_content_coding(fake: DdiFake, client: DdiClient) -> None:
    fake.offer("8", ARTIFACT)
    fake.fault("artifact", headers={"Content-Encoding": "gzip"})
    with pytest.raises(MalformedResponse, match="Content-Encoding: expected no content coding, got 'gzip'"):
        client.open_artifact(fake_artifact(fake))


@pytest.mark.parametrize("status, error", [(404, NotFound), (410, Gone), (401, AuthError), (503, ServerUnavailable)])
def test_open_artifact_maps_errors(fake: DdiFake, client: DdiClient, status: int, error: Type[ServerError]) -> None:
    fake.offer("8", ARTIFACT)
    fake.fault("artifact", status=status)
    with pytest.raises(error):
        client.open_artifact(fake_artifact(fake))


def test_unusable_href_is_malformed(client: DdiClient) -> None:
    link = ActionLink("8", "http://[::1")
    with pytest.raises((MalformedResponse, ServerUnavailable)):
        client.deployment(link)


def test_error_message_never_exceeds_a_short_server_text(fake: DdiFake, client: DdiClient) -> None:
    fake.fault("root", status=500, body=os.urandom(5000))
    with pytest.raises(ServerUnavailable) as err:
        client.poll()
    assert len(str(err.value)) < 400

