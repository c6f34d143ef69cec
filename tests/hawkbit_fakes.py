"""Test doubles for hawkBit: `DdiFake`, a scripted DDI server, and `FaultProxy`, a TCP proxy that breaks links.

DdiFake speaks the DDI JSON that otad/hawkbit/ddi.py reads (what goosebit lacks: cancel, installedBase,
304, 410, maintenance windows, md5/sha256, download-http) and injects faults per endpoint.
FaultProxy sits in front of any server (the fake or goosebit) and drops, stalls or throttles
connections by a schedule. Both run on 127.0.0.1 in daemon threads; stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Sequence, Tuple

CONTROLLER_ID = "dev-01"
TENANT = "DEFAULT"
ENDPOINTS = ("root", "deploymentBase", "deploymentBase/feedback", "cancelAction", "cancelAction/feedback",
             "configData", "installedBase", "artifact")


# --- faults ------------------------------------------------------------------------------

@dataclass
class Fault:
    """What goes wrong with the next `times` requests to one endpoint (None: all of them)."""

    status: Optional[int] = None  # answer with this status (and `body`, default empty)
    headers: Dict[str, str] = field(default_factory=dict)  # extra headers, e.g. Retry-After
    body: Optional[bytes] = None  # replace the body, e.g. truncated JSON
    content_length: Optional[int] = None  # claim this length; the connection closes after the body
    drop_after: Optional[int] = None  # send this many body bytes, then close the connection
    stall_s: float = 0.0  # pause this long after `stall_after` body bytes
    stall_after: int = 0
    release: Optional[threading.Event] = None  # ends the stall early when set
    rate_bps: Optional[int] = None  # a slow link
    ignore_range: bool = False  # answer 200 with the whole file to a ranged request
    chunked: bool = False  # Transfer-Encoding: chunked; with drop_after the body ends cleanly but short
    times: Optional[int] = 1


@dataclass
class Recorded:
    method: str
    endpoint: str
    path: str  # with the query
    headers: Dict[str, str]
    body: bytes


@dataclass
class Feedback:
    kind: str  # deploymentBase | cancelAction
    action_id: str
    body: Dict[str, Any]

    @property
    def execution(self) -> str:
        return str(self.body["status"]["execution"])

    @property
    def finished(self) -> str:
        return str(self.body["status"]["result"]["finished"])


@dataclass
class FakeArtifact:
    filename: str
    data: bytes
    module: int
    hashes: Sequence[str] = ("sha256", "sha1", "md5")
    links: Sequence[str] = ("download", "download-http")

    @property
    def etag(self) -> str:
        return '"%s"' % hashlib.sha1(self.data).hexdigest()  # hawkBit's ETag is the sha1


@dataclass
class Action:
    id: str
    artifacts: List[FakeArtifact]
    download: str = "forced"
    update: str = "forced"
    window: Optional[str] = None
    version: str = "1.0.1"
    state: str = "open"  # open | canceling | closed | canceled
    c: int = 0  # bumped whenever the action changes, like hawkBit's ?c=


# --- the DDI fake ------------------------------------------------------------------------

class DdiFake:
    """A hawkBit DDI server for one controller, scripted from tests."""

    def __init__(self, controller_id: str = CONTROLLER_ID, tenant: str = TENANT) -> None:
        self.controller_id = controller_id
        self.tenant = tenant
        self.sleep = "00:00:01"
        self.auth: Optional[str] = None  # required Authorization header value, e.g. "TargetToken abc"
        self.download_auth = True  # whether artifact downloads need `auth` too
        self.omit_empty_links = True  # hawkBit omits empty _links; goosebit sends {}
        self.multipart = "hawkbit"  # how several ranges are framed: hawkBit >= 0.10, or "hawkbit-old" (< 0.10)
        self.config_data_requested = True  # a new target is asked for its attributes
        self.actions: Dict[str, Action] = {}
        self.current: Optional[str] = None
        self.installed: Optional[str] = None
        self.requests: List[Recorded] = []
        self.feedback_log: List[Feedback] = []
        self.config_data_log: List[Dict[str, Any]] = []
        self._faults: Dict[str, List[Fault]] = {}
        self._modules = 100
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.server_errors: List[str] = []  # handler crashes (a bug in the fake), not client hang-ups
        self._server = _Server(("127.0.0.1", 0), _DdiHandler)
        self._server.fake = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base = f"{self.url}/{tenant}/controller/v1/{controller_id}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "DdiFake":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # scripting

    def offer(self, action_id: str, artifact_bytes: bytes, download: str = "forced", update: str = "forced",
              window: Optional[str] = None, *, filename: str = "update.swu", version: str = "1.0.1",
              hashes: Sequence[str] = ("sha256", "sha1", "md5"),
              links: Sequence[str] = ("download", "download-http"),
              extra_artifacts: Sequence[Tuple[str, bytes]] = ()) -> Action:
        """Open an action (the one the root poll links to) with one chunk of artifacts."""
        with self._lock:
            self._modules += 1
            arts = [FakeArtifact(filename, artifact_bytes, self._modules, hashes, links)]
            arts += [FakeArtifact(name, data, self._modules, hashes, links) for name, data in extra_artifacts]
            action = Action(action_id, arts, download, update, window, version)
            self.actions[action_id] = action
            self.current = action_id
            return action

    def cancel(self, action_id: str) -> None:
        with self._lock:
            self.actions[action_id].state = "canceling"
            self.actions[action_id].c += 1

    def fault(self, endpoint: str, **kw: Any) -> Fault:
        """Queue a Fault for `endpoint` (one of ENDPOINTS); faults apply in the order queued."""
        assert endpoint in ENDPOINTS, endpoint
        f = Fault(**kw)
        with self._lock:
            self._faults.setdefault(endpoint, []).append(f)
        return f

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, endpoint: str, method: Optional[str] = None) -> int:
        return sum(1 for r in self.requests if r.endpoint == endpoint and method in (None, r.method))

    def downloads(self) -> int:
        """Artifact downloads begun from byte 0 (the first request asks for the head only; the
        rest of the same download, or a resumed one, starts further in)."""
        return sum(1 for r in self.requests if r.endpoint == "artifact"
                   and (r.headers.get("Range") or "bytes=0-").startswith("bytes=0-"))

    def artifact_url(self, action_id: str, rel: str = "download") -> str:
        art = self.actions[action_id].artifacts[0]
        return self._artifact_href(art, rel)

    # serving (called from handler threads)

    def take_fault(self, endpoint: str) -> Optional[Fault]:
        with self._lock:
            queue = self._faults.get(endpoint) or []
            if not queue:
                return None
            f = queue[0]
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    queue.pop(0)
            return f

    def route(self, method: str, path: str) -> Tuple[str, Optional[str], Optional[str]]:
        """(endpoint, action id or module, artifact file name) for a request path, or ("", ..) if unknown."""
        prefix = f"/{self.tenant}/controller/v1/{self.controller_id}"
        p = urllib.parse.urlsplit(path).path
        if not p.startswith(prefix):
            return "", None, None
        rest = p[len(prefix):]
        patterns = [("root", r""), ("configData", r"/configData"),
                    ("deploymentBase", r"/deploymentBase/([^/]+)"),
                    ("deploymentBase/feedback", r"/deploymentBase/([^/]+)/feedback"),
                    ("cancelAction", r"/cancelAction/([^/]+)"),
                    ("cancelAction/feedback", r"/cancelAction/([^/]+)/feedback"),
                    ("installedBase", r"/installedBase/([^/]+)"),
                    ("artifact", r"/softwaremodules/(\d+)/artifacts/([^/]+)")]
        for name, pattern in patterns:
            m = re.fullmatch(pattern, rest)
            if m:
                groups = list(m.groups()) + [None, None]
                return name, groups[0], groups[1]
        return "", None, None

    def root_body(self) -> Dict[str, Any]:
        links: Dict[str, Any] = {}
        action = self.actions.get(self.current or "")
        if action is not None and action.state == "open":
            links["deploymentBase"] = {"href": f"{self.base}/deploymentBase/{action.id}?c={action.c}"}
        elif action is not None and action.state == "canceling":
            links["cancelAction"] = {"href": f"{self.base}/cancelAction/{action.id}"}
        if self.installed is not None:
            links["installedBase"] = {"href": f"{self.base}/installedBase/{self.installed}"}
        if self.config_data_requested:
            links["configData"] = {"href": f"{self.base}/configData"}
        body: Dict[str, Any] = {"config": {"polling": {"sleep": self.sleep}}}
        if links or not self.omit_empty_links:
            body["_links"] = links
        return body

    def root_etag(self) -> str:
        return '"%s"' % hashlib.sha1(json.dumps(self.root_body(), sort_keys=True).encode()).hexdigest()[:16]

    def deployment_body(self, action: Action) -> Dict[str, Any]:
        dep: Dict[str, Any] = {"download": action.download, "update": action.update}
        if action.window is not None:
            dep["maintenanceWindow"] = action.window
        dep["chunks"] = [{"part": "os", "version": action.version, "name": "rootfs",
                          "artifacts": [self._artifact_json(a) for a in action.artifacts],
                          "metadata": [{"key": "k", "value": "v"}]}]
        return {"id": action.id, "deployment": dep, "actionHistory": {"status": "RUNNING", "messages": []}}

    def _artifact_json(self, art: FakeArtifact) -> Dict[str, Any]:
        digests = {"sha256": hashlib.sha256(art.data).hexdigest(), "sha1": hashlib.sha1(art.data).hexdigest(),
                   "md5": hashlib.md5(art.data).hexdigest()}
        return {"filename": art.filename, "size": len(art.data),
                "hashes": {k: digests[k] for k in art.hashes},
                "_links": {rel: {"href": self._artifact_href(art, rel)} for rel in art.links}}

    def _artifact_href(self, art: FakeArtifact, rel: str) -> str:
        # Both rels name the same file; the query tells a test which one the client took.
        href = f"{self.base}/softwaremodules/{art.module}/artifacts/{art.filename}"
        return href + "?via=http" if rel == "download-http" else href

    def find_artifact(self, module: str, filename: str) -> Optional[FakeArtifact]:
        for action in self.actions.values():
            for art in action.artifacts:
                if str(art.module) == module and art.filename == filename:
                    return art
        return None

    def record_feedback(self, kind: str, action_id: str, body: Dict[str, Any]) -> int:
        """Apply feedback the way hawkBit does; the HTTP status to answer."""
        with self._lock:
            action = self.actions.get(action_id)
            if action is None:
                return 404
            if action.state in ("closed", "canceled"):
                return 410
            if kind == "cancelAction" and action.state != "canceling":
                return 405
            self.feedback_log.append(Feedback(kind, action_id, body))
            status = body.get("status", {})
            execution, finished = status.get("execution"), status.get("result", {}).get("finished")
            if kind == "cancelAction":
                if execution == "closed" and finished in ("success", "none"):
                    action.state = "canceled"
                elif execution in ("rejected", "closed"):
                    action.state = "open"
            elif execution == "closed":
                action.state = "closed"
                if finished in ("success", "none"):
                    self.installed = action_id
                    self.config_data_requested = True
            elif execution == "downloaded" and action.update == "skip" and action.window is None:
                action.state = "closed"  # a download-only action closes on `downloaded`
            action.c += 1
            return 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: DdiFake

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # a client hanging up is normal here; anything else is not
            self.fake.server_errors.append(traceback.format_exc())


class _DdiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "DdiFake/1"

    @property
    def fake(self) -> DdiFake:
        server = self.server
        assert isinstance(server, _Server)
        return server.fake

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        fake = self.fake
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        endpoint, ident, filename = fake.route(method, self.path)
        fake.requests.append(Recorded(method, endpoint, self.path, dict(self.headers.items()), body))
        fault = fake.take_fault(endpoint) if endpoint else None
        if fault is not None and fault.status is not None:
            self._send(fault.status, fault.body or b"", {}, fault)
            return
        needs_auth = fake.auth is not None and (endpoint != "artifact" or fake.download_auth)
        if needs_auth and self.headers.get("Authorization") != fake.auth:
            self._send_json(401, {"errorCode": "hawkbit.server.error.unauthorized"}, fault)
            return
        handler = getattr(self, "_" + endpoint.replace("/", "_"), None) if endpoint else None
        if handler is None or (method == "GET") != (endpoint in ("root", "deploymentBase", "cancelAction",
                                                                  "installedBase", "artifact")):
            self._send(404 if handler is None else 405, b"", {}, fault)
            return
        handler(ident, filename, body, fault)

    # endpoints

    def _root(self, _id: Optional[str], _f: Optional[str], _b: bytes, fault: Optional[Fault]) -> None:
        payload = json.dumps(self.fake.root_body(), sort_keys=True).encode()
        etag = self.fake.root_etag()
        if self.headers.get("If-None-Match") == etag and fault is None:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self._send(200, payload, {"Content-Type": "application/json", "ETag": etag}, fault)

    def _deploymentBase(self, ident: Optional[str], _f: Optional[str], _b: bytes,
                        fault: Optional[Fault]) -> None:
        action = self.fake.actions.get(ident or "")
        if action is None or action.state != "open":
            self._send_json(404, {"errorCode": "hawkbit.server.error.repo.entitiyNotFound"}, fault)
        else:
            self._send_json(200, self.fake.deployment_body(action), fault)

    def _installedBase(self, ident: Optional[str], _f: Optional[str], _b: bytes,
                       fault: Optional[Fault]) -> None:
        action = self.fake.actions.get(ident or "")
        if action is None or action.state != "closed" or self.fake.installed != ident:
            self._send_json(404, {"errorCode": "hawkbit.server.error.repo.entitiyNotFound"}, fault)
        else:
            self._send_json(200, self.fake.deployment_body(action), fault)

    def _cancelAction(self, ident: Optional[str], _f: Optional[str], _b: bytes, fault: Optional[Fault]) -> None:
        action = self.fake.actions.get(ident or "")
        if action is None or action.state != "canceling":
            self._send_json(404, {"errorCode": "hawkbit.server.error.repo.entitiyNotFound"}, fault)
        else:
            self._send_json(200, {"id": action.id, "cancelAction": {"stopId": action.id}}, fault)

    def _deploymentBase_feedback(self, ident: Optional[str], _f: Optional[str], body: bytes,
                                 fault: Optional[Fault]) -> None:
        self._feedback("deploymentBase", ident or "", body, fault)

    def _cancelAction_feedback(self, ident: Optional[str], _f: Optional[str], body: bytes,
                               fault: Optional[Fault]) -> None:
        self._feedback("cancelAction", ident or "", body, fault)

    def _feedback(self, kind: str, ident: str, body: bytes, fault: Optional[Fault]) -> None:
        try:
            doc = json.loads(body)
            assert isinstance(doc["status"]["result"]["finished"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            self._send(400, b"", {}, fault)
            return
        self._send(self.fake.record_feedback(kind, ident, doc), b"", {}, fault)

    def _configData(self, _id: Optional[str], _f: Optional[str], body: bytes, fault: Optional[Fault]) -> None:
        try:
            doc = json.loads(body)
            ok = isinstance(doc.get("data"), dict) and bool(doc["data"])
        except ValueError:
            ok = False
        if ok:
            self.fake.config_data_log.append(doc)
            self.fake.config_data_requested = False
        self._send(200 if ok else 400, b"", {}, fault)

    def _artifact(self, module: Optional[str], filename: Optional[str], _b: bytes,
                  fault: Optional[Fault]) -> None:
        art = self.fake.find_artifact(module or "", filename or "")
        if art is None:
            self._send(404, b"", {}, fault)
            return
        data, total = art.data, len(art.data)
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": art.etag}
        if_range = self.headers.get("If-Range")
        if "," in self.headers.get("Range", "") and not (if_range is not None and if_range != art.etag) \
                and not (fault and fault.ignore_range):
            self._ranges(data, headers, fault)
            return
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match is None or (if_range is not None and if_range != art.etag) or (fault and fault.ignore_range):
            self._send(200, data, headers, fault)
            return
        start = int(match.group(1))
        end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
        if start >= total or end < start:
            self._send(416, b"", {"Content-Range": f"bytes */{total}"}, fault)
            return
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        self._send(206, memoryview(data)[start:end + 1], headers, fault)

    def _ranges(self, data: bytes, headers: Dict[str, str], fault: Optional[Fault]) -> None:
        """Several ranges, as hawkBit's FileStreamingUtil answers them: sorted, 416 on overlap,
        one multipart/byteranges body in the fake's dialect (tests/range_server.py writes it)."""
        from tests.range_server import multipart_body, parse_ranges

        ranges = parse_ranges(self.headers.get("Range", ""), len(data))
        ordered = sorted(ranges or [])
        if not ordered or any(a >= len(data) or a >= b for a, b in ordered) or \
                any(ordered[i][1] > ordered[i + 1][0] for i in range(len(ordered) - 1)):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, fault)
            return
        content_type, body = multipart_body(data, ordered, self.fake.multipart)
        self._send(206, body, {**headers, "Content-Type": content_type}, fault)

    # writing, with faults

    def _send_json(self, status: int, doc: Any, fault: Optional[Fault]) -> None:
        self._send(status, json.dumps(doc).encode(), {"Content-Type": "application/json"}, fault)

    def _send(self, status: int, body: "bytes | memoryview", headers: Dict[str, str],
              fault: Optional[Fault]) -> None:
        f = fault or Fault()
        if f.body is not None and f.status is None:
            body = f.body
        length = f.content_length if f.content_length is not None else len(body)
        self.send_response(status)
        for name, value in {**headers, **f.headers}.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding" if f.chunked else "Content-Length",
                         "chunked" if f.chunked else str(length))
        self.end_headers()
        view = memoryview(body)
        if f.drop_after is not None:
            view = view[:f.drop_after]
        try:
            self._write(view, f)
            if f.chunked:
                self.wfile.write(b"0\r\n\r\n")  # a clean end, whatever was cut
                self.wfile.flush()
                return
        except OSError:
            self.close_connection = True
            return
        if len(view) != length:  # the client must not wait for bytes that will never come
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _write(self, view: memoryview, f: Fault) -> None:
        stopping = self.fake.stopping
        piece = max(1, f.rate_bps // 20) if f.rate_bps else 64 * 1024
        pos = 0
        while pos < len(view):
            if f.stall_s and pos <= f.stall_after < pos + piece:
                self._put(view[pos:f.stall_after], f.chunked)
                pos = f.stall_after
                if f.release is not None:
                    f.release.wait(f.stall_s)
                if stopping.wait(0 if f.release is not None else f.stall_s):
                    raise OSError("fake stopping")
                f = Fault(rate_bps=f.rate_bps, chunked=f.chunked)  # stall once per response
            self._put(view[pos:pos + piece], f.chunked)
            pos += piece
            if f.rate_bps and stopping.wait(piece / f.rate_bps):
                raise OSError("fake stopping")

    def _put(self, data: memoryview, chunked: bool) -> None:
        if not data:
            return
        if chunked:
            self.wfile.write(b"%x\r\n" % len(data))
        self.wfile.write(data)
        if chunked:
            self.wfile.write(b"\r\n")
        self.wfile.flush()


# --- the TCP fault proxy -----------------------------------------------------------------

@dataclass
class ConnPlan:
    """What happens to one proxied connection; byte counts are of what the client receives."""

    drop_after: Optional[int] = None  # close both sides after this many bytes (headers included)
    stall_after: Optional[int] = None  # hold the stream for `stall_s` after this many bytes
    stall_s: float = 0.0
    rate_bps: Optional[int] = None


class FaultProxy:
    """Forwards 127.0.0.1:port to `upstream`; connection i follows `plans[i]` (later ones pass through)."""

    def __init__(self, upstream: str, plans: Sequence[ConnPlan] = ()) -> None:
        parts = urllib.parse.urlsplit(upstream if "//" in upstream else "//" + upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.plans: List[ConnPlan] = list(plans)
        self.connections = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: List[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def rewrite(self, url: str) -> str:
        """`url` with the proxy's host and port: the same request, through the proxy."""
        return urllib.parse.urlsplit(url)._replace(netloc=f"127.0.0.1:{self.port}").geturl()

    def close(self) -> None:
        self._stopping.set()
        _close(self._listener)  # shutdown() wakes the accept() blocked in the other thread
        with self._lock:
            for s in self._sockets:
                _close(s)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                index, self.connections = self.connections, self.connections + 1
                self._sockets += [client, server]
            plan = self.plans[index] if index < len(self.plans) else ConnPlan()
            threading.Thread(target=self._pump_up, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(server, client, plan), daemon=True).start()

    def _pump_up(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                server.sendall(data)
                with self._lock:
                    self.bytes_up += len(data)
        except OSError:
            pass
        _close(client, server)

    def _pump_down(self, server: socket.socket, client: socket.socket, plan: ConnPlan) -> None:
        sent, stalled = 0, False
        try:
            while True:
                data = server.recv(16384 if plan.rate_bps is None else max(1, min(16384, plan.rate_bps // 20)))
                if not data:
                    break
                if plan.drop_after is not None:
                    data = data[:max(0, plan.drop_after - sent)]
                if plan.stall_after is not None and not stalled and sent + len(data) > plan.stall_after:
                    cut = plan.stall_after - sent
                    client.sendall(data[:cut])
                    sent, data, stalled = sent + cut, data[cut:], True
                    if self._stopping.wait(plan.stall_s):
                        break
                client.sendall(data)
                sent += len(data)
                with self._lock:
                    self.bytes_down += len(data)
                if plan.drop_after is not None and sent >= plan.drop_after:
                    break
                if plan.rate_bps and self._stopping.wait(len(data) / plan.rate_bps):
                    break
        except OSError:
            pass
        _close(client, server)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def wait_until(predicate: Any, timeout_s: float = 10.0, step_s: float = 0.05) -> bool:
    """Poll `predicate()` until true or `timeout_s` passes; its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = bool(predicate())
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step_s)
