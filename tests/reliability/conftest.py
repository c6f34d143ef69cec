"""Shared by the reliability suite: the fault record, the `reliability` marker, run sizes, and
the simulated device as the tests use it (bundles, the CLI in-process or as its own process, what
the device looks like after power returns).

Sizes come from the environment so that CI runs the suite in a few minutes and
`scripts/reliability` runs it longer: OTAD_FUZZ_EXAMPLES (hypothesis examples per fuzz test),
OTAD_CHAOS_SEEDS (network chaos seeds), OTAD_RELIABILITY_FULL=1 (every crash point, including
the ones whose files another point already produces, each kill in a real `python -m otad`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from otad import cli as otad_cli
from otad import config as otad_config
from otad.crashpoint import CRASH_AT, CRASH_LIST
from otad.boot.envimage import parse_image
from otad.sim.device import ENV_SIZE, BootReport, InitResult, SimDevice, contains_good_marker, make_image
from tests.bundles import ImageSpec, sha256, signed_members, write_bundle
from tests.pki import Pki
from tests.reliability.report import RECORDER, Recorder, write_doc

REPO = Path(__file__).resolve().parents[2]
SLOT_BYTES = 1 << 20  # small slots and images: the suite kills otad hundreds of times
IMAGE_BYTES = 128 << 10
NEW_VERSION = "2.0"


def fuzz_examples() -> int:
    return int(os.environ.get("OTAD_FUZZ_EXAMPLES", "200"))


def chaos_seeds() -> int:
    return int(os.environ.get("OTAD_CHAOS_SEEDS", "4"))


def full_sweep() -> bool:
    return os.environ.get("OTAD_RELIABILITY_FULL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: "list[pytest.Item]") -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def record() -> Iterator[Recorder]:
    RECORDER.settings.update({"fuzz examples per test": str(fuzz_examples()),
                              "chaos seeds": str(chaos_seeds()),
                              "crash points": "all" if full_sweep() else "every distinct on-disk state"})
    yield RECORDER


def atheris_rows(recorder: Recorder) -> None:
    """Rows for the atheris runs scripts/reliability made before this session (OTAD_ATHERIS_RESULTS:
    a folder with TARGET.rc and TARGET.log per target)."""
    import re

    folder = os.environ.get("OTAD_ATHERIS_RESULTS")
    if not folder or not os.path.isdir(folder):
        return
    seconds = os.environ.get("OTAD_ATHERIS_SECONDS", "?")
    for rc_file in sorted(Path(folder).glob("*.rc")):
        target = rc_file.stem
        rc = rc_file.read_text().strip()
        log = (Path(folder) / f"{target}.log").read_text(errors="replace")
        done = re.search(r"Done (\d+) runs in (\d+) second", log)
        cov = re.findall(r"cov: (\d+)", log)
        if rc == "0" and done:
            edges = cov[-1] if cov else "?"
            observed = f"{done.group(1)} inputs in {done.group(2)} s, coverage {edges} edges, no crash"
        else:
            tail = " / ".join(line.strip() for line in log.strip().splitlines()[-4:])
            observed = f"exit {rc}: {tail[:300]}"
        recorder.add("Coverage-guided fuzzing (atheris)", f"atheris, {seconds} s, from seeds of real inputs",
                     target, "only the errors the hypothesis tests allow", observed, rc == "0" and bool(done))
    recorder.settings["atheris seconds per target"] = seconds


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    atheris_rows(RECORDER)
    path = write_doc(RECORDER)
    if path is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"reliability: wrote {path}")


# --------------------------------------------------------------------------- devices and bundles


def sim_bundle(workdir: Path, pki: Pki, version: str, *, good: bool = True, size: int = IMAGE_BYTES) -> Path:
    """A signed .swu for the sim: selection stable,copy1 writes slot a, stable,copy2 slot b."""
    image = make_image(version, good=good, size=size)
    digest = sha256(image)
    copies = " ".join(f'copy{n} = {{ images = ( {{ filename = "rootfs.img"; device = "/dev/mmcblk0p{n + 1}"; '
                      f'sha256 = "{digest}"; }} ); }};' for n in (1, 2))
    desc = (f'software = {{ version = "{version}"; description = "otad reliability"; '
            f'hardware-compatibility = ["1.0"]; stable = {{ {copies} }}; }};\n').encode()
    work = workdir / f"bundle-{hashlib.sha256(desc).hexdigest()[:16]}"
    work.mkdir(parents=True)
    return write_bundle(work / "update.swu", signed_members(desc, [ImageSpec("rootfs.img", image, "")], pki, work))


@dataclass(frozen=True)
class Bundles:
    good: Path  # version NEW_VERSION, boots
    bad: Path  # version NEW_VERSION, its kernel hangs (U-Boot falls back after bootlimit)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Bundles:
    work = tmp_path_factory.mktemp("reliability-bundles")
    return Bundles(sim_bundle(work, pki, NEW_VERSION), sim_bundle(work, pki, NEW_VERSION, good=False))


def new_sim(root: Path, pki: Pki, *, redundant_env: bool = False, extra_config: str = "",
            slot_size: int = SLOT_BYTES) -> SimDevice:
    """A fresh simulated Pi, powered on once: slot a (version 1.0) runs, nothing is pending."""
    sim = SimDevice.create(root, slot_size=slot_size, trust_file=pki.ca_pem, redundant_env=redundant_env,
                           extra_config=extra_config)
    sim.boot(run_init=False)  # `otad confirm` would find nothing to do on a new card
    return sim


def cli(sim: SimDevice, *args: str) -> Tuple[int, str, str]:
    """`otad --config <sim> ARGS` in this process (the same code as the subprocess, much cheaper)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = otad_cli.main(["--config", str(sim.layout.config), *args])
    return rc, out.getvalue(), err.getvalue()


def confirm_in_process(sim: SimDevice) -> InitResult:
    """S98otad's `otad confirm`, as `SimDevice.boot(init=...)` wants it."""
    return InitResult(*cli(sim, "confirm"))


def otad_proc(sim: SimDevice, *args: str, crash_at: Optional[str] = None, crash_list: Optional[Path] = None,
              timeout_s: float = 120.0) -> "subprocess.CompletedProcess[str]":
    """`python -m otad --config <sim> ARGS` as its own process, so that it can be killed at a crash point."""
    env = {k: v for k, v in os.environ.items() if k not in (CRASH_AT, CRASH_LIST)}
    if crash_at is not None:
        env[CRASH_AT] = crash_at
    if crash_list is not None:
        env[CRASH_LIST] = str(crash_list)
    command = [sys.executable, "-m", "otad", "--config", str(sim.layout.config), *args]
    return subprocess.run(command, env=env, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def status(sim: SimDevice) -> Dict[str, Any]:
    """`otad status --json`."""
    rc, out, err = cli(sim, "status", "--json")
    assert rc == 0, err
    doc: Dict[str, Any] = json.loads(out)
    return doc


def load_config(sim: SimDevice) -> otad_config.Config:
    return otad_config.load(str(sim.layout.config))


def hawkbit_section(url: str, **extra: Any) -> str:
    settings: Dict[str, Any] = {"url": url, "controller_id": "dev-01", "poll_min_s": 1, "feedback_interval_s": 0.05,
                                "read_timeout_s": 2, "connect_timeout_s": 2, "backoff_cap_s": 60}
    settings.update(extra)
    body = " ".join(f"{k} = {json.dumps(v)};" for k, v in settings.items())
    return f"hawkbit = {{ {body} }};\n"


class Clock:
    """Monotonic time in which sleeping costs nothing (the daemon's waits, in-process)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def now(self) -> float:
        return time.monotonic() + self.skipped

    def sleep(self, seconds: float) -> None:
        self.skipped += max(0.0, seconds)


# --------------------------------------------------------------------------- what the device looks like


@dataclass
class Look:
    """The device after power returned: `kind` is completed, not_done or half."""

    kind: str
    problems: List[str]
    summary: str
    status: Dict[str, Any] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.problems and self.kind != "half"


def stray_temp_files(sim: SimDevice) -> List[Path]:
    dirs = (sim.layout.state_dir, sim.layout.env_path.parent)
    return sorted(p for d in dirs for p in d.glob(".*.tmp"))


def env_copies_valid(sim: SimDevice) -> Tuple[bool, str]:
    """Each env file as U-Boot reads it: a single copy must be valid, of a redundant pair one."""
    paths = [sim.layout.env_path] + ([sim.layout.env_redund_path] if sim.layout.env_redund_path.exists() else [])
    redundant = len(paths) == 2
    valid = [parse_image(p.read_bytes(), ENV_SIZE, redundant=redundant) is not None for p in paths]
    return (any(valid) if redundant else all(valid)), "/".join("ok" if v else "bad CRC" for v in valid)


def look(sim: SimDevice, boot: Optional[BootReport], *, new_slot: str = "b", old_slot: str = "a") -> Look:
    problems: List[str] = []
    if boot is not None and boot.stuck:
        problems.append("stuck: no boot came up")
    booted = sim.booted_slot()
    if booted is None or not contains_good_marker(sim.read_slot(booted)):
        problems.append(f"running slot {booted} does not hold a bootable image")
    ok, copies = env_copies_valid(sim)
    if not ok:
        problems.append(f"env: {copies}")
    doc = status(sim)
    for key in ("booted_problem", "env_problem", "state_problem", "mismatch"):
        if doc.get(key):
            problems.append(f"{key}: {doc[key]}")
    if doc.get("pending_trial"):
        problems.append(f"a trial is still pending: {doc['pending_trial']}")
    env, phase, last = doc.get("env") or {}, doc.get("phase"), doc.get("last_result")
    settled = env.get("upgrade_available") == "0" and env.get("otad_prev") is None and phase == "idle"
    new_image = make_image(NEW_VERSION, size=IMAGE_BYTES)
    if (booted == new_slot and settled and env.get("rootpart") == "3" and last is not None
            and last["outcome"] == "confirmed" and last["slot"] == new_slot
            and sim.read_slot(new_slot, len(new_image)) == new_image):
        kind = "completed"
    elif (booted == old_slot and settled and env.get("rootpart") == "2"
          and (last is None or last["outcome"] != "confirmed")):
        kind = "not_done"
    else:
        kind = "half"
        problems.append(f"half state: booted {booted}, phase {phase}, env rootpart={env.get('rootpart')} "
                        f"upgrade_available={env.get('upgrade_available')} otad_prev={env.get('otad_prev')}, "
                        f"last {last['outcome'] if last else None}")
    outcome = f"{last['outcome']}" if last else "no result"
    summary = {"completed": f"confirmed on slot {new_slot}", "not_done": f"slot {old_slot} runs, {outcome}",
               "half": "HALF STATE"}[kind]
    strays = stray_temp_files(sim)
    if strays:
        summary += f" ({len(strays)} stray temp file{'s' if len(strays) > 1 else ''}: {strays[0].name})"
    return Look(kind, problems, summary, doc)


def tear_temp_files(sim: SimDevice) -> None:
    """A temp file left by the kill may hold anything after a real cut: make it garbage."""
    for path in stray_temp_files(sim):
        path.write_bytes(b"\0" * 17)
