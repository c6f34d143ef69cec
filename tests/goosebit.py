"""A real goosebit 0.2.12 for integration tests: start it, drive its admin API, build bundles it accepts.

The server runs from its own venv (.venv-goosebit, made by scripts/goosebit-setup, or
$GOOSEBIT_PYTHON) on 127.0.0.1, one per pytest session (or per `start_goosebit` call), following
the steps of scripts/goosebit-setup. Missing venv: skip, or fail when OTAD_REQUIRE_GOOSEBIT is set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
ADMIN = ("admin@goosebit.local", "admin")
START_TIMEOUT_S = 60.0


def goosebit_python() -> Path:
    """The interpreter that has goosebit==0.2.12: $GOOSEBIT_PYTHON, else .venv-goosebit's."""
    return Path(os.environ.get("GOOSEBIT_PYTHON") or REPO / ".venv-goosebit" / "bin" / "python")


def require_goosebit() -> Path:
    """The goosebit interpreter, or skip (fail under OTAD_REQUIRE_GOOSEBIT) when it is missing."""
    python = goosebit_python()
    probe = subprocess.run([str(python), "-c", "import goosebit, uvicorn, aerich"], capture_output=True) \
        if python.exists() else None
    if probe is None or probe.returncode != 0:
        why = (f"goosebit==0.2.12 not found at {python}: run scripts/goosebit-setup "
               "(or set GOOSEBIT_PYTHON)")
        if os.environ.get("OTAD_REQUIRE_GOOSEBIT"):
            pytest.fail(f"OTAD_REQUIRE_GOOSEBIT is set but {why}", pytrace=False)
        pytest.skip(why)
    return python


@dataclass
class Goosebit:
    """A running goosebit: `base` (its root URL), `ddi` (= base + /DEFAULT/controller/v1), admin token."""

    base: str
    token: str
    workdir: Path
    session: requests.Session

    @property
    def ddi(self) -> str:
        return f"{self.base}/DEFAULT/controller/v1"

    def api(self, method: str, path: str, **kw: Any) -> requests.Response:
        """An admin API call (Bearer token); raises on any HTTP error, showing the body."""
        resp = self.session.request(method, self.base + path, timeout=30,
                                    headers={"Authorization": f"Bearer {self.token}"}, **kw)
        if resp.status_code >= 400:
            raise AssertionError(f"goosebit {method} {path}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp

    def upload(self, bundle_path: Path) -> int:
        """Upload a .swu; its software id (= the DDI action id)."""
        with open(bundle_path, "rb") as f:
            resp = self.api("PUT", "/api/v1/software", files={"file": (bundle_path.name, f)})
        return int(resp.json()["id"])

    def rollout(self, software_id: int, name: Optional[str] = None, feed: str = "default") -> int:
        body = {"name": name or f"rollout-{software_id}", "feed": feed, "software_id": software_id}
        return int(self.api("PUT", "/api/v1/rollouts", json=body).json()["id"])

    def device(self, controller_id: str) -> Dict[str, Any]:
        """`GET /api/v1/devices/{id}`: last_state, sw_version, progress, hardware, ..."""
        doc: Dict[str, Any] = self.api("GET", f"/api/v1/devices/{controller_id}").json()
        return doc

    def device_log(self, controller_id: str) -> str:
        return str(self.api("GET", f"/api/v1/devices/{controller_id}/log").json().get("log") or "")

    def force_update(self, controller_id: str) -> None:
        """Offer again (also out of Error, or the version already installed)."""
        self.api("PATCH", "/api/v1/devices", json={"devices": [controller_id], "force_update": True})

    def add_device(self, controller_id: str, auth_token: Optional[str] = None) -> None:
        """Create a device (needed before its first poll in strict device-auth mode)."""
        body: Dict[str, Any] = {"devices": [controller_id]}
        if auth_token is not None:
            body["auth_token"] = auth_token
        self.api("PUT", "/api/v1/devices", json=body)

    def server_log(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def start_goosebit(workdir: Path, extra_env: Optional[Mapping[str, str]] = None) -> Iterator[Goosebit]:
    """Run a fresh goosebit (own SQLite DB and artifact dir in `workdir`) until the block ends."""
    python = require_goosebit()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, GOOSEBIT_DB_URI=f"sqlite://{workdir}/db.sqlite3",
               GOOSEBIT_ARTIFACTS_DIR=str(workdir / "artifacts"), GOOSEBIT_POLL_TIME="00:00:01",
               GOOSEBIT_SECRET_KEY="test-secret-0123456789abcdef", **(extra_env or {}))
    env.pop("GOOSEBIT_PYTHON", None)
    migrations = subprocess.check_output(
        [str(python), "-c", "import goosebit, os; print(os.path.dirname(goosebit.__file__) + '/db/migrations')"],
        env=env, cwd=workdir, text=True, stderr=subprocess.DEVNULL).strip().splitlines()[-1]
    (workdir / "aerich.toml").write_text('[tool.aerich]\ntortoise_orm = "goosebit.db.config.TORTOISE_CONF"\n'
                                         f'location = "{migrations}"\n')
    # Without the migrations uvicorn exits with rc=3; cwd matters: goosebit reads ./goosebit.yaml.
    subprocess.run([str(python), "-m", "aerich", "--config", "aerich.toml", "upgrade"], env=env, cwd=workdir,
                   check=True, capture_output=True)
    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen([str(python), "-m", "uvicorn", "goosebit:app", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names
    try:
        _wait_until_up(proc, session, base, workdir)
        resp = session.post(base + "/setup", data={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30)
        resp.raise_for_status()
        yield Goosebit(base, resp.json()["access_token"], workdir, session)
    finally:
        session.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_until_up(proc: "subprocess.Popen[bytes]", session: requests.Session, base: str, workdir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"goosebit exited with rc={proc.returncode}:\n"
                                 + (workdir / "server.log").read_text(errors="replace")[-3000:])
        try:
            if session.get(base + "/docs", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"goosebit did not answer within {START_TIMEOUT_S:.0f} s:\n"
                         + (workdir / "server.log").read_text(errors="replace")[-3000:])


@pytest.fixture(scope="session")
def goosebit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Goosebit]:
    """One goosebit for the session; tests isolate themselves by controller id and hw revision."""
    with start_goosebit(tmp_path_factory.mktemp("goosebit")) as server:
        yield server


# --- bundles goosebit accepts --------------------------------------------------------------

def newc(members: Sequence[Tuple[str, bytes]]) -> bytes:
    """A cpio newc archive of `members` (name, data), in order, with its trailer."""
    out = bytearray()
    for ino, (name, data) in enumerate(list(members) + [("TRAILER!!!", b"")], 1):
        raw = name.encode() + b"\0"
        mode = 0 if name == "TRAILER!!!" else 0o100644
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def write_swu(path: Path, version: str, hw_revision: str, payload: bytes,
              extra_members: Sequence[Tuple[str, bytes]] = ()) -> bytes:
    """An (unsigned) .swu whose sw-description goosebit reads: version and hardware compatibility."""
    desc = (f'software = {{ version = "{version}"; hardware-compatibility = ["{hw_revision}"];\n'
            f'  images = ( {{ filename = "rootfs.img"; device = "/dev/mmcblk0p3"; }} ); }};\n').encode()
    data = newc([("sw-description", desc), ("rootfs.img", payload)] + list(extra_members))
    path.write_bytes(data)
    return data
