"""The hawkBit DDI v1 client: one method per endpoint, typed results, one error per failure.

Owns HTTP (requests.Session, TLS, auth headers, status codes) and the JSON shapes, parsed
strictly where otad uses a field and leniently elsewhere. What to do with an action (state,
retries, feedback throttling) is the agent's; resuming a download is download.py's.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from types import TracebackType
from typing import (Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple, Type,
                    Union)

import requests

from otad.errors import ConfigError
# The errors live in otad.errors; re-exported here because callers catch them per endpoint.
from otad.errors import AuthError as AuthError
from otad.errors import Conflict as Conflict
from otad.errors import Forbidden as Forbidden
from otad.errors import Gone as Gone
from otad.errors import InvalidConfigData as InvalidConfigData
from otad.errors import MalformedResponse as MalformedResponse
from otad.errors import NotFound as NotFound
from otad.errors import QuotaExceeded as QuotaExceeded
from otad.errors import Rejected as Rejected
from otad.errors import ServerError as ServerError
from otad.errors import ServerUnavailable as ServerUnavailable
from otad.errors import UnsupportedDeployment as UnsupportedDeployment
from otad.hawkbit.policy import parse_sleep, retry_after
from otad.httpget import BodyResponse
from otad.smallfile import read_bytes

log = logging.getLogger(__name__)

AUTH_MODES = ("none", "target_token", "gateway_token")
EXECUTIONS = ("closed", "proceeding", "canceled", "scheduled", "rejected", "resumed", "downloaded",
              "download")
FINISHED = ("success", "failure", "none")
HANDLING = ("skip", "attempt", "forced")
WINDOWS = ("available", "unavailable")
CONFIG_MODES = ("merge", "replace", "remove")

MAX_JSON_BYTES = 1 << 20  # DDI bodies are a few KiB; anything this big is not a DDI answer
MAX_TOKEN_BYTES = 4096
MAX_DETAILS = 10  # otad's budget within hawkBit's 50 messages per feedback (§7 of the DDI notes)
MAX_DETAIL_CHARS = 256
MAX_CONFIG_CHARS = 128
MAX_CONFIG_ENTRIES = 100
_CONFIG_TEXT = re.compile(r"[\x20-\x5f\x61-\x7d]*")  # printable ASCII without ` (0x60) and ~ (0x7e)
_TOKEN = re.compile(r"[\x21-\x7e]+")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


# --- settings and results ----------------------------------------------------------------

@dataclass(frozen=True)
class HawkbitSettings:
    """The [hawkbit] section: where the server is and how this device authenticates."""

    url: str
    controller_id: str
    tenant: str = "DEFAULT"
    auth: str = "none"  # none | target_token | gateway_token
    token_file: Optional[str] = None  # read at every request, so a rotated token is picked up
    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 60.0  # also the longest silence inside a body before it counts as stalled
    download_without_token: bool = False
    verify_tls: bool = True

    def __post_init__(self) -> None:
        try:
            parts = urllib.parse.urlsplit(self.url)
        except ValueError:  # urllib: "Invalid IPv6 URL" for an unbalanced '[' or ']'
            raise ConfigError(f"hawkbit.url: expected http(s)://host[:port][/path], got {self.url!r}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"hawkbit.url: expected http(s)://host[:port][/path], got {self.url!r}")
        for key in ("controller_id", "tenant"):
            value = getattr(self, key)
            if not value or "/" in value or any(c.isspace() for c in value):
                raise ConfigError(f"hawkbit.{key}: expected a non-empty name without '/' or spaces, "
                                  f"got {value!r}")
        if self.auth not in AUTH_MODES:
            raise ConfigError(f"hawkbit.auth: expected one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if self.auth != "none" and not self.token_file:
            raise ConfigError(f"hawkbit.token_file: required with auth = {self.auth!r}")
        if self.client_key and not self.client_cert:
            raise ConfigError("hawkbit.client_key: given without hawkbit.client_cert")
        for key in ("connect_timeout_s", "read_timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"hawkbit.{key}: expected a number > 0, got {getattr(self, key)!r}")

    @property
    def base_url(self) -> str:
        """`{server}/{tenant}/controller/v1/{controllerId}`."""
        quote = urllib.parse.quote
        return (f"{self.url.rstrip('/')}/{quote(self.tenant, safe='')}/controller/v1/"
                f"{quote(self.controller_id, safe='')}")


@dataclass(frozen=True)
class ActionLink:
    """An action link of the root poll; `id` is the href's last path segment."""

    id: str
    href: str


@dataclass(frozen=True)
class RootPoll:
    """What the root poll says: how long to sleep and which one action (if any) is open."""

    sleep_s: float
    deployment: Optional[ActionLink] = None
    cancel: Optional[ActionLink] = None
    config_data_requested: bool = False
    installed_base: Optional[str] = None
    confirmation: Optional[ActionLink] = None


@dataclass(frozen=True)
class Artifact:
    """One downloadable file of a chunk; hashes are lower-case hex or None when not sent."""

    filename: str
    size: int
    sha256: Optional[str]
    sha1: Optional[str]
    md5: Optional[str]
    download_url: str  # the `download` link, else `download-http`

    def strongest_hash(self) -> Optional[Tuple[str, str]]:
        """(algorithm, hex digest) for the strongest hash given: sha256 > sha1 > md5."""
        for name in ("sha256", "sha1", "md5"):
            value: Optional[str] = getattr(self, name)
            if value:
                return name, value
        return None


@dataclass(frozen=True)
class Chunk:
    """One software module of a deployment."""

    part: str
    version: str
    name: str
    artifacts: Tuple[Artifact, ...]
    metadata: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Deployment:
    """A deploymentBase (or installedBase) answer."""

    action_id: str
    download: str  # skip | attempt | forced
    update: str  # skip | attempt | forced
    maintenance_window: Optional[str]  # None (no schedule) | available | unavailable
    chunks: Tuple[Chunk, ...]

    def swu_artifact(self) -> Artifact:
        """The one `*.swu` artifact over all chunks, which must carry at least one hash."""
        every = [a for c in self.chunks for a in c.artifacts]
        swus = [a for a in every if a.filename.lower().endswith(".swu")]
        where = f"action {self.action_id}"
        if len(swus) != 1:
            raise UnsupportedDeployment(f"expected exactly one *.swu artifact, found {len(swus)} among "
                                        f"{[a.filename for a in every]!r}", where)
        if swus[0].strongest_hash() is None:
            raise UnsupportedDeployment(f"artifact {swus[0].filename!r} has no sha256, sha1 or md5", where)
        return swus[0]

    def artifact(self, filename: str) -> Optional[Artifact]:
        """The artifact named `filename` beside the .swu, in its chunk (a delta's chunk data,
        SWUpdate's `zckfile`); None when there is none."""
        swu = self.swu_artifact()
        for chunk in self.chunks:
            if swu in chunk.artifacts:
                return next((a for a in chunk.artifacts if a.filename == filename), None)
        return None


@dataclass(frozen=True)
class CancelAction:
    """A cancelAction answer: cancel `stop_id` (normally equal to `action_id`)."""

    action_id: str
    stop_id: str


@dataclass(frozen=True)
class ArtifactResponse:
    """An open artifact download; close it (or use `with`).

    status 200: the body starts at 0 (no Range sent, or the server ignored it / If-Range was
    stale); 206: the body starts at `start` == the offset asked for; 416: nothing to read, and
    `total_size` == `start` means the file is already complete.
    """

    status: int
    total_size: Optional[int]
    start: int
    etag: Optional[str]
    response: requests.Response

    @property
    def complete(self) -> bool:
        return self.status == 416 and self.total_size == self.start

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> "ArtifactResponse":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()


# --- JSON reading ------------------------------------------------------------------------

def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


class _Fields:
    """Reads fields of one JSON answer strictly; errors name the URL and the field path."""

    def __init__(self, url: str) -> None:
        self.url = url

    def fail(self, path: str, detail: str) -> NoReturn:
        raise MalformedResponse(detail, self.url, field=path or "(body)")

    def obj(self, value: object, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"expected an object, got {_kind(value)}")
        return value

    def opt_obj(self, parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
        value = parent.get(key)
        return {} if value is None else self.obj(value, path)

    def array(self, parent: Mapping[str, Any], key: str, path: str) -> List[Any]:
        value = parent.get(key)
        if not isinstance(value, list):
            self.fail(path, f"expected an array, got {_kind(value)}")
        return value

    def text(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        value = parent.get(key)
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_kind(value)}")
        return value

    def opt_text(self, parent: Mapping[str, Any], key: str, path: str) -> Optional[str]:
        return None if parent.get(key) is None else self.text(parent, key, path)

    def ident(self, parent: Mapping[str, Any], key: str, path: str) -> str:
        """An id: a string per DDI; a plain number is accepted and turned into one."""
        value = parent.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        text = self.text(parent, key, path)
        if not text:
            self.fail(path, "expected a non-empty id, got ''")
        return text

    def count(self, parent: Mapping[str, Any], key: str, path: str) -> int:
        value = parent.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(path, f"expected an integer >= 0, got {value!r}")
        return value

    def choice(self, parent: Mapping[str, Any], key: str, path: str, allowed: Sequence[str]) -> str:
        value = self.text(parent, key, path)
        if value not in allowed:
            self.fail(path, f"expected one of {', '.join(allowed)}, got {value!r}")
        return value

    def digest(self, parent: Mapping[str, Any], key: str, path: str, hex_len: int) -> Optional[str]:
        value = self.opt_text(parent, key, path)
        if value is None or value == "":
            return None
        if not re.fullmatch(f"[0-9a-fA-F]{{{hex_len}}}", value):
            self.fail(path, f"expected {hex_len} hex digits, got {value!r}")
        return value.lower()

    def href(self, links: Mapping[str, Any], rel: str, path: str) -> Optional[str]:
        """`_links.<rel>.href` resolved against the request URL, or None when the rel is absent."""
        if links.get(rel) is None:
            return None
        link = self.obj(links[rel], f"{path}.{rel}")
        text = self.text(link, "href", f"{path}.{rel}.href")
        try:
            href = urllib.parse.urljoin(self.url, text)
            parts = urllib.parse.urlsplit(href)
        except ValueError as exc:  # urllib: "Invalid IPv6 URL" for an unbalanced '[' or ']'
            self.fail(f"{path}.{rel}.href", f"expected an http(s) URL, got {text!r} ({exc})")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.fail(f"{path}.{rel}.href", f"expected an http(s) URL, got {href!r}")
        return href

    def action(self, links: Mapping[str, Any], rel: str) -> Optional[ActionLink]:
        href = self.href(links, rel, "_links")
        if href is None:
            return None
        # The action id is the last path segment, query removed (hawkBit adds ?c=..).
        segment = urllib.parse.urlsplit(href).path.rstrip("/").rsplit("/", 1)[-1]
        action_id = urllib.parse.unquote(segment)
        if not action_id:
            self.fail(f"_links.{rel}.href", f"expected .../{rel}/<action id>, got {href!r}")
        return ActionLink(action_id, href)


def parse_root(body: object, url: str) -> RootPoll:
    """The root poll answer."""
    f = _Fields(url)
    root = f.obj(body, "")
    polling = f.obj(f.obj(root.get("config"), "config").get("polling"), "config.polling")
    sleep_text = f.text(polling, "sleep", "config.polling.sleep")
    try:
        sleep_s = parse_sleep(sleep_text)
    except MalformedResponse as exc:
        raise MalformedResponse(exc.detail, url, field=exc.field) from None
    links = f.opt_obj(root, "_links", "_links")  # hawkBit omits empty _links, goosebit sends {}
    return RootPoll(
        sleep_s=sleep_s,
        deployment=f.action(links, "deploymentBase"),
        cancel=f.action(links, "cancelAction"),
        config_data_requested=f.href(links, "configData", "_links") is not None,
        installed_base=f.href(links, "installedBase", "_links"),
        confirmation=f.action(links, "confirmationBase"),
    )


def parse_deployment(body: object, url: str) -> Deployment:
    """A deploymentBase or installedBase answer; goosebit's idle `null` is a NotFound."""
    if body is None:
        raise NotFound("no deployment: the server answered null (no open action)", url, 200)
    f = _Fields(url)
    root = f.obj(body, "")
    dep = f.obj(root.get("deployment"), "deployment")
    window = None
    if dep.get("maintenanceWindow") is not None:
        window = f.choice(dep, "maintenanceWindow", "deployment.maintenanceWindow", WINDOWS)
    chunks = tuple(_parse_chunk(f, c, f"deployment.chunks[{i}]")
                   for i, c in enumerate(f.array(dep, "chunks", "deployment.chunks")))
    return Deployment(
        action_id=f.ident(root, "id", "id"),
        download=f.choice(dep, "download", "deployment.download", HANDLING),
        update=f.choice(dep, "update", "deployment.update", HANDLING),
        maintenance_window=window,
        chunks=chunks,
    )


def _parse_chunk(f: _Fields, value: object, path: str) -> Chunk:
    chunk = f.obj(value, path)
    metadata = []
    listed = () if chunk.get("metadata") is None else f.array(chunk, "metadata", f"{path}.metadata")
    for i, item in enumerate(listed):
        entry = f.obj(item, f"{path}.metadata[{i}]")
        metadata.append((f.text(entry, "key", f"{path}.metadata[{i}].key"),
                         f.text(entry, "value", f"{path}.metadata[{i}].value")))
    artifacts = f.array(chunk, "artifacts", f"{path}.artifacts")
    return Chunk(
        part=f.text(chunk, "part", f"{path}.part"),
        version=f.text(chunk, "version", f"{path}.version"),
        name=f.text(chunk, "name", f"{path}.name"),
        artifacts=tuple(_parse_artifact(f, a, f"{path}.artifacts[{i}]") for i, a in enumerate(artifacts)),
        metadata=tuple(metadata),
    )


def _parse_artifact(f: _Fields, value: object, path: str) -> Artifact:
    art = f.obj(value, path)
    hashes = f.obj(art.get("hashes"), f"{path}.hashes")
    links = f.obj(art.get("_links"), f"{path}._links")
    url = f.href(links, "download", f"{path}._links") or f.href(links, "download-http", f"{path}._links")
    if url is None:
        f.fail(f"{path}._links", f"expected a 'download' or 'download-http' link, got {sorted(links)!r}")
    filename = f.text(art, "filename", f"{path}.filename")
    if not filename:
        f.fail(f"{path}.filename", "expected a file name, got ''")
    return Artifact(
        filename=filename,
        size=f.count(art, "size", f"{path}.size"),
        sha256=f.digest(hashes, "sha256", f"{path}.hashes.sha256", 64),
        sha1=f.digest(hashes, "sha1", f"{path}.hashes.sha1", 40),
        md5=f.digest(hashes, "md5", f"{path}.hashes.md5", 32),
        download_url=url,
    )


def parse_cancel(body: object, url: str) -> CancelAction:
    f = _Fields(url)
    root = f.obj(body, "")
    cancel = f.obj(root.get("cancelAction"), "cancelAction")
    return CancelAction(action_id=f.ident(root, "id", "id"),
                        stop_id=f.ident(cancel, "stopId", "cancelAction.stopId"))


# --- feedback and configData bodies --------------------------------------------------------

def trim_details(details: Sequence[str]) -> List[str]:
    """At most 10 lines of at most 256 characters; a detail with newlines counts as several lines."""
    lines = [line for d in details for line in str(d).splitlines() or [""]]
    if len(lines) > MAX_DETAILS:
        lines = lines[:MAX_DETAILS - 1] + [f"... {len(lines) - MAX_DETAILS + 1} more lines not sent"]
    return [line if len(line) <= MAX_DETAIL_CHARS else line[:MAX_DETAIL_CHARS - 3] + "..." for line in lines]


def feedback_body(action_id: str, execution: str, finished: str, details: Sequence[str] = (),
                  progress: Optional[Tuple[int, Optional[int]]] = None, code: Optional[int] = None, *,
                  now: Optional[float] = None) -> Dict[str, Any]:
    """The feedback JSON; `now` (epoch seconds) adds `time` and `timestamp`, else the server uses its clock."""
    if execution not in EXECUTIONS:
        raise ValueError(f"feedback execution: expected one of {', '.join(EXECUTIONS)}, got {execution!r}")
    if finished not in FINISHED:
        raise ValueError(f"feedback finished: expected one of {', '.join(FINISHED)}, got {finished!r}")
    result: Dict[str, Any] = {"finished": finished}
    if progress is not None:
        result["progress"] = {"cnt": progress[0], "of": progress[1]}  # goosebit needs both keys
    status: Dict[str, Any] = {"execution": execution, "result": result}
    if code is not None:
        status["code"] = code
    lines = trim_details(details)
    if lines:
        status["details"] = lines
    body: Dict[str, Any] = {"id": action_id}
    if now is not None:
        body["time"] = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))  # goosebit 422s on a non-string
        body["timestamp"] = int(now * 1000)
    body["status"] = status
    return body


def check_config_data(data: Mapping[str, str], mode: str = "merge") -> None:
    """Raise InvalidConfigData for what hawkBit's configData would refuse."""
    if mode not in CONFIG_MODES:
        raise InvalidConfigData(f"mode: expected one of {', '.join(CONFIG_MODES)}, got {mode!r}", "configData")
    if not data or len(data) > MAX_CONFIG_ENTRIES:
        raise InvalidConfigData(f"expected 1..{MAX_CONFIG_ENTRIES} attributes, got {len(data)}", "configData")
    for key, value in data.items():
        for what, text in (("key", key), ("value", value)):
            if not isinstance(text, str) or len(text) > MAX_CONFIG_CHARS or not _CONFIG_TEXT.fullmatch(text) \
                    or (what == "key" and not text):
                raise InvalidConfigData(f"{what}: expected 1..{MAX_CONFIG_CHARS} printable ASCII characters "
                                        f"without ` and ~, got {text!r}", f"configData[{key!r}]")


# --- the client ----------------------------------------------------------------------------

class DdiClient:
    """Talks DDI for one controller; safe to use from two threads (poll while downloading)."""

    def __init__(self, settings: HawkbitSettings, *, session: Optional[requests.Session] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.base = settings.base_url
        self._session = session if session is not None else requests.Session()
        self._clock = clock  # wall clock: feedback time stamps and Retry-After dates
        self._lock = threading.Lock()
        self._root_etag: Optional[str] = None
        self._root_cache: Optional[RootPoll] = None

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "DdiClient":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    # endpoints

    def poll(self) -> RootPoll:
        """GET the root; a 304 to If-None-Match returns the previous answer."""
        with self._lock:
            etag, cached = self._root_etag, self._root_cache
        headers = {"If-None-Match": etag} if etag and cached else {}
        resp = self._request("GET", self.base, headers=headers)
        if resp.status_code == 304:
            resp.close()
            if cached is None:
                raise MalformedResponse("304 Not Modified to a request without If-None-Match", self.base, 304)
            log.debug("root unchanged (304)")
            return cached
        root = parse_root(self._json(resp, self.base), self.base)
        with self._lock:
            self._root_etag, self._root_cache = resp.headers.get("ETag"), root
        return root

    def deployment(self, link: ActionLink) -> Deployment:
        """GET deploymentBase (href verbatim, with its `c`)."""
        return parse_deployment(self._get_json(link.href), link.href)

    def installed_base(self, href: str) -> Deployment:
        return parse_deployment(self._get_json(href), href)

    def cancel_action(self, link: ActionLink) -> CancelAction:
        return parse_cancel(self._get_json(link.href), link.href)

    def feedback(self, action_id: str, execution: str, finished: str, details: Sequence[str] = (),
                 progress: Optional[Tuple[int, Optional[int]]] = None, code: Optional[int] = None, *,
                 cancel: bool = False, clock_ok: bool) -> None:
        """POST deploymentBase/{id}/feedback (cancelAction/{id}/feedback with `cancel`).

        Raises Gone when the action is already closed (the caller counts that as delivered)
        and QuotaExceeded on a quota 429. Without a trusted clock no time stamp is sent.
        """
        body = feedback_body(action_id, execution, finished, details, progress, code,
                             now=self._clock() if clock_ok else None)
        kind = "cancelAction" if cancel else "deploymentBase"
        url = f"{self.base}/{kind}/{urllib.parse.quote(action_id, safe='')}/feedback"
        self._drain(self._request("POST", url, json_body=body), url)
        log.debug("feedback %s %s/%s sent for action %s", kind, execution, finished, action_id)

    def config_data(self, data: Mapping[str, str], mode: str = "merge") -> None:
        """PUT configData; attributes are checked before anything is sent."""
        check_config_data(data, mode)
        url = f"{self.base}/configData"
        self._drain(self._request("PUT", url, json_body={"mode": mode, "data": dict(data)}), url)

    def open_artifact(self, artifact: Artifact, *, offset: int = 0, end: Optional[int] = None,
                      if_range: Optional[str] = None) -> ArtifactResponse:
        """Start streaming an artifact from `offset` (Range: bytes=offset-, and If-Range if given),
        up to byte `end` (exclusive) if given: a server that honours it sends no more."""
        if offset < 0 or (end is not None and end <= offset):
            raise ValueError(f"offset, end: expected 0 <= offset < end, got {offset}, {end}")
        url = artifact.download_url
        # identity: byte offsets and lengths must be those of the file, not of a compressed body
        headers = {"Accept": "application/octet-stream, */*", "Accept-Encoding": "identity"}
        if offset or end is not None:
            headers["Range"] = f"bytes={offset}-{'' if end is None else end - 1}"
            if if_range and offset:
                headers["If-Range"] = if_range
        resp = self._request("GET", url, headers=headers, download=True)
        try:
            return self._artifact_response(resp, url, offset)
        except BaseException:
            resp.close()
            raise

    def open_url(self, url: str, headers: Mapping[str, str]) -> BodyResponse:
        """GET `url` (chunk requests to an artifact's link) with this client's session, auth and
        TLS; the answer open, to be read in pieces. Statuses map to errors as for every request."""
        resp = self._request("GET", url, headers={"Accept": "application/octet-stream, */*", **headers},
                             download=True)
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            resp.close()
            raise MalformedResponse(f"expected no content coding, got {encoding!r}", url, resp.status_code,
                                    field="Content-Encoding")
        return BodyResponse(resp)

    # HTTP plumbing

    def _artifact_response(self, resp: requests.Response, url: str, offset: int) -> ArtifactResponse:
        code, etag = resp.status_code, resp.headers.get("ETag")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity") and code in (200, 206):
            raise MalformedResponse(f"expected no content coding, got {encoding!r}", url, code,
                                    field="Content-Encoding")
        if code == 200:
            return ArtifactResponse(200, _content_length(resp, url), 0, etag, resp)
        if code == 206:
            header = resp.headers.get("Content-Range", "")
            match = _CONTENT_RANGE.fullmatch(header.strip())
            if match is None:
                raise MalformedResponse(f"expected 'bytes {offset}-END/TOTAL', got {header!r}", url, 206,
                                        field="Content-Range")
            start, end = int(match.group(1)), int(match.group(2))
            total = None if match.group(3) == "*" else int(match.group(3))
            if start != offset or end < start or (total is not None and end >= total):
                raise MalformedResponse(f"expected a range starting at {offset}, got {header!r}", url, 206,
                                        field="Content-Range")
            return ArtifactResponse(206, total, start, etag, resp)
        if code == 416:
            header = resp.headers.get("Content-Range", "")
            match = _UNSATISFIED_RANGE.fullmatch(header.strip())
            resp.close()
            return ArtifactResponse(416, int(match.group(1)) if match else None, offset, etag, resp)
        raise MalformedResponse(f"unexpected HTTP {code} to an artifact download", url, code)

    def _get_json(self, url: str) -> object:
        return self._json(self._request("GET", url), url)

    def _request(self, method: str, url: str, *, headers: Optional[Dict[str, str]] = None,
                 json_body: Optional[Dict[str, Any]] = None, download: bool = False) -> requests.Response:
        """Send one request; any status other than 2xx, 304 and 416 becomes its ServerError."""
        s = self.settings
        all_headers = {"Accept": "application/json"}
        all_headers.update(headers or {})
        if s.auth != "none" and not (download and s.download_without_token):
            all_headers["Authorization"] = self._authorization(url)
        cert: Union[None, str, Tuple[str, str]] = None
        if s.client_cert:
            cert = (s.client_cert, s.client_key) if s.client_key else s.client_cert
        log.debug("%s %s", method, url)
        try:
            resp = self._session.request(
                method, url, headers=all_headers, json=json_body, stream=True, cert=cert,
                timeout=(s.connect_timeout_s, s.read_timeout_s),
                verify=s.ca_file if s.ca_file else s.verify_tls)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise MalformedResponse(f"unusable URL: {exc}", url) from exc
        except requests.RequestException as exc:
            raise ServerUnavailable(f"no answer ({type(exc).__name__}: {exc})", url) from exc
        if resp.status_code < 300 or resp.status_code in (304, 416):
            return resp
        try:
            self._raise_for_status(resp, url)
        finally:
            resp.close()

    def _authorization(self, url: str) -> str:
        path = self.settings.token_file
        assert path is not None  # HawkbitSettings requires it whenever auth != none
        raw = read_bytes(path, "the token file", limit=MAX_TOKEN_BYTES,
                         error=lambda what, where: AuthError(f"{where}: {what}", url))
        token = raw.decode("ascii", "replace").strip()
        # Never quote the token itself in an error.
        if not _TOKEN.fullmatch(token):
            raise AuthError(f"token file {path}: expected one word of printable ASCII "
                            f"(got {len(token)} characters)", url)
        scheme = "TargetToken" if self.settings.auth == "target_token" else "GatewayToken"
        return f"{scheme} {token}"

    def _raise_for_status(self, resp: requests.Response, url: str) -> NoReturn:
        code = resp.status_code
        body = _read_some(resp, 4096)
        error_code, message = _error_fields(body)
        what = f"HTTP {code} {resp.reason or ''}".rstrip() + (f": {message}" if message else "")
        wait = retry_after(resp.headers.get("Retry-After"), self._clock())
        if code == 429 and "quota" in error_code:
            raise QuotaExceeded(what, url, code)
        classes: Dict[int, Type[ServerError]] = {
            401: AuthError, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone, 429: ServerUnavailable}
        cls = classes.get(code) or (ServerUnavailable if code >= 500 else Rejected)
        raise cls(what, url, code, retry_after_s=wait)

    def _json(self, resp: requests.Response, url: str) -> object:
        """The JSON body, at most MAX_JSON_BYTES; a body shorter than Content-Length is a dropped answer."""
        with resp:
            status = resp.status_code
            try:
                body = _read_some(resp, MAX_JSON_BYTES + 1, strict=True)
            except requests.RequestException as exc:
                raise ServerUnavailable(f"answer broke off ({type(exc).__name__}: {exc})", url, status) from exc
        if len(body) > MAX_JSON_BYTES:
            raise MalformedResponse(f"body larger than {MAX_JSON_BYTES} bytes", url, status)
        declared = _content_length(resp, url)
        if declared is not None and declared != len(body):
            raise ServerUnavailable(f"answer broke off after {len(body)} of {declared} bytes", url, status)
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested
            raise MalformedResponse(f"expected JSON, got {body[:60]!r} ({exc})", url, status) from None

    def _drain(self, resp: requests.Response, url: str) -> None:
        """Read and drop a body we don't use (hawkBit: empty, goosebit: a small object)."""
        with resp:
            try:
                _read_some(resp, MAX_JSON_BYTES)
            except requests.RequestException as exc:
                log.debug("%s: ignoring a broken body after HTTP %s: %s", url, resp.status_code, exc)


def _content_length(resp: requests.Response, url: str) -> Optional[int]:
    header = resp.headers.get("Content-Length")
    if header is None:
        return None
    if not header.strip().isdigit():
        raise MalformedResponse(f"expected a byte count, got {header!r}", url, resp.status_code,
                                field="Content-Length")
    return int(header)


def _read_some(resp: requests.Response, limit: int, *, strict: bool = False) -> bytes:
    """Up to `limit` bytes of the body; errors propagate only when `strict`."""
    parts: List[bytes] = []
    got = 0
    try:
        for part in resp.iter_content(64 * 1024):
            parts.append(part)
            got += len(part)
            if got >= limit:
                break
    except requests.RequestException:
        if strict:
            raise
    return b"".join(parts)[:limit]


def _error_fields(body: bytes) -> Tuple[str, str]:
    """(errorCode, a short message) from a hawkBit/FastAPI error body, '' where absent."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        text = body.decode("ascii", "replace").strip()
        return "", text[:200] if text.isprintable() else ""
    if not isinstance(doc, dict):
        return "", ""
    code = doc.get("errorCode")
    message = doc.get("message", doc.get("detail"))
    return (code if isinstance(code, str) else "",
            message[:200] if isinstance(message, str) else "")
