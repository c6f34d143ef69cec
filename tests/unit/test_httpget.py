"""The static-URL opener on urllib3: what a user sets keeps requests' meaning (proxies from the
environment, no_proxy, TLS verification and ca_file, redirects), statuses map to otad's errors,
and `otad install` of a delta bundle does not load requests at all."""

from __future__ import annotations

import http.server
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from otad.errors import MalformedResponse, Rejected, ServerUnavailable
from otad.httpget import MAX_REDIRECTS, PlainOpener

BODY = bytes(range(256)) * 64


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: List[Tuple[str, str]]  # (request target, Host header), shared by the server's requests

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Host", "")))
        target = self.path.split("://", 1)[-1].split("/", 1)[-1]  # a proxy gets the absolute URL
        if target.startswith("hop/"):
            left = int(target.split("/")[1])
            self._answer(302, b"", {"Location": f"/hop/{left - 1}" if left > 1 else "/file"})
        elif target == "file":
            self._answer(200, BODY)
        else:
            self._answer(int(target.split("/")[-1]), b"no")

    def _answer(self, status: int, body: bytes, headers: "dict[str, str] | None" = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(tls: "ssl.SSLContext | None" = None) -> Tuple[http.server.HTTPServer, List[Tuple[str, str]]]:
    seen: List[Tuple[str, str]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, seen


@pytest.fixture
def origin() -> Iterator[Tuple[str, List[Tuple[str, str]]]]:
    server, seen = _serve()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name)


def read_all(opener: PlainOpener, url: str) -> bytes:
    resp = opener(url, {"Accept-Encoding": "identity"})
    try:
        return b"".join(iter(resp.read, b""))
    finally:
        resp.close()


def test_a_plain_get_and_its_statuses(origin: Tuple[str, List[Tuple[str, str]]]) -> None:
    url, _ = origin
    opener = PlainOpener(timeout_s=5)
    assert read_all(opener, f"{url}/file") == BODY
    assert opener(f"{url}/x/416", {}).status == 416  # a range past the end: the fetcher's to judge
    with pytest.raises(Rejected, match="HTTP 404"):
        opener(f"{url}/x/404", {})
    with pytest.raises(ServerUnavailable, match="HTTP 503"):
        opener(f"{url}/x/503", {})
    with pytest.raises(ServerUnavailable, match="no answer"):
        opener("http://127.0.0.1:9/file", {})  # nothing listens on the discard port


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/file", "127.0.0.1/file", "http:///file"])
def test_an_unusable_url_is_malformed(url: str) -> None:
    with pytest.raises(MalformedResponse, match="unusable URL"):
        PlainOpener()(url, {})


def test_redirects_are_followed_as_requests_follows_them(origin: Tuple[str, List[Tuple[str, str]]]) -> None:
    url, seen = origin
    assert read_all(PlainOpener(timeout_s=5), f"{url}/hop/{MAX_REDIRECTS}") == BODY
    assert len(seen) == MAX_REDIRECTS + 1
    with pytest.raises(ServerUnavailable, match="no answer"):
        PlainOpener(timeout_s=5)(f"{url}/hop/{MAX_REDIRECTS + 1}", {})


def test_the_environments_proxy_is_used_and_no_proxy_bypasses_it(origin: Tuple[str, List[Tuple[str, str]]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen_by_origin = origin
    proxy, seen_by_proxy = _serve()  # answers the absolute-form request itself, as a caching proxy may
    try:
        monkeypatch.setenv("http_proxy", f"127.0.0.1:{proxy.server_address[1]}")  # no scheme: http, as requests
        origin_url = url.replace("127.0.0.1", "origin.invalid")
        assert read_all(PlainOpener(timeout_s=5), f"{origin_url}/file") == BODY
        assert seen_by_proxy == [(f"{origin_url}/file", origin_url.split("//")[1])] and seen_by_origin == []
        monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
        assert read_all(PlainOpener(timeout_s=5), f"{url}/file") == BODY
        assert seen_by_origin == [("/file", url.split("//")[1])] and len(seen_by_proxy) == 1
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_tls_is_verified_against_ca_file_or_the_bundle_requests_would_use(tls_cert: Tuple[Path, Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tls_cert
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, _ = _serve(context)
    url = f"https://127.0.0.1:{server.server_address[1]}/file"
    try:
        with pytest.raises(ServerUnavailable, match="no answer .*(CERTIFICATE_VERIFY_FAILED|SSL)"):
            PlainOpener(timeout_s=5)(url, {})  # a self-signed server, not in certifi's bundle
        assert read_all(PlainOpener(ca_file=str(cert), timeout_s=5), url) == BODY
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        assert read_all(PlainOpener(timeout_s=5), url) == BODY
    finally:
        server.shutdown()
        server.server_close()


def test_the_static_opener_does_not_load_requests() -> None:
    code = ("import sys, otad.httpget, otad.install.delta, otad.update; otad.httpget.PlainOpener(); "
            "print('requests' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
