"""One writer at a time: two real `otad` processes race on a simulated device (issue 9 §1).

For each pair of commands, 20 trials start the two at random offsets (seeded; the seed is
printed). The one started first is slowed down and held near its end until the other one has
exited (its bundle comes through stdin and the last 4 KiB wait; the daemon's download stalls
before its last 4 KiB; the health check of `confirm` waits for a file), so whenever the second
one tries to write while the first holds the writer lock, it must lose. Whatever the timing:

- an `install`, `confirm` or `env set` ends with 0 or 75; a 75 printed only the busy line
  naming the other process (so it did nothing else); the daemon either armed its action or
  skipped it with nothing sent to the server and the action still open;
- slot b holds the image of the last process that installed, the state and the env are armed
  for that version, and `env set` left its variable exactly when it succeeded.

Before the lock, a second `install` landing inside the first one's stream also exits 0 and slot
b ends up holding both bundles (the test fails on the first such trial).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from otad.hawkbit.deployment import HEAD_BYTES
from otad.sim.device import GOOD_MARKER, SimDevice, otad_command
from otad.state import Phase, StateStore
from tests.bundles import ImageSpec, sha256, signed_members, write_bundle
from tests.hawkbit_fakes import DdiFake
from tests.pki import Pki
from tests.unit.hawkbit.test_agent import hawkbit_section

TRIALS = 20
LANES = 2  # trials run two at a time, each lane on its own device (and DDI fake)
MAX_OFFSET_S = 0.7
FEED_S = 0.4  # the first install's bundle goes through its stdin over about this long
HOLD_BYTES = 4096  # ... except its last bytes, which wait until the other process has exited
TIMEOUT_S = 60.0
SLOT_SIZE = 2 << 20
BUSY = re.compile(r"otad: error: busy: (?:pid (\d+) \(otad [^\n]*\) is [^\n]+ since \d\d:\d\d:\d\d"
                  r"|pid (\d+) holds the writer lock \S+|another otad process held the writer lock .*)")


@dataclass(frozen=True)
class Bundle:
    version: str
    path: Path
    image: bytes


def make_bundle(root: Path, pki: Pki, version: str, size: int) -> Bundle:
    """A signed A/B bundle for the sim whose image is random bytes behind the sim's good marker."""
    image = GOOD_MARKER + f"version={version}\n".encode() + os.urandom(size)
    digest = sha256(image)
    copies = " ".join(f'copy{n} = {{ images = ( {{ filename = "rootfs.img"; device = "/dev/mmcblk0p{n + 1}"; '
                      f'sha256 = "{digest}"; }} ); }};' for n in (1, 2))
    desc = f'software = {{ version = "{version}"; hardware-compatibility = ["1.0"]; stable = {{ {copies} }}; }};\n'
    work = root / f"bundle-{version}"
    work.mkdir(parents=True)
    path = write_bundle(work / "update.swu", signed_members(desc.encode(), [ImageSpec("rootfs.img", image, "")],
                                                            pki, work))
    return Bundle(version, path, image)


@dataclass
class Racer:
    """One otad process of a trial. A `held` one stays near its end until `let_go` is called."""

    kind: str
    held: bool
    proc: "subprocess.Popen[bytes]"
    logs: Path  # stdout and stderr go to logs.out and logs.err
    let_go: Callable[[], None]
    bundle: Optional[Bundle] = None
    exited: Optional[float] = None
    out: str = ""
    err: str = ""
    feeder: Optional[threading.Thread] = None

    @property
    def rc(self) -> int:
        assert self.proc.returncode is not None
        return self.proc.returncode

    def describe(self) -> str:
        return (f"{self.kind}{' (held)' if self.held else ''} pid {self.proc.pid} exit {self.proc.returncode}"
                f"\n  stdout: {self.out.strip()!r}\n  stderr: {self.err.strip()[-1500:]!r}")


@dataclass
class Lane:
    """One simulated device (restored before every trial) and what its trials need."""

    root: Path
    sim: SimDevice
    pristine: Path
    marks: Path
    bundles: Dict[str, Bundle]
    fake: Optional[DdiFake] = None
    trial: int = 0
    action: str = ""

    def restore(self) -> None:
        shutil.rmtree(self.sim.layout.root)
        shutil.copytree(self.pristine, self.sim.layout.root, symlinks=True)
        shutil.rmtree(self.marks, ignore_errors=True)
        self.marks.mkdir()
        self.trial += 1
        if self.fake is not None:
            self.fake.clear_faults()
            self.action = f"{self.root.name}-{self.trial}"
            self.fake.offer(self.action, self.bundles["run"].path.read_bytes(), version=self.bundles["run"].version)


def new_lane(root: Path, pki: Pki, pair: Tuple[str, str]) -> Lane:
    marks = root / "marks"
    health: List[str] = []
    extra = ""
    fake = None
    if "confirm" in pair:
        # The first `confirm` is held in its health check until the other process has exited.
        health = [f"touch {marks}/started; i=0; while [ ! -e {marks}/go ] && [ $i -lt 600 ]; do sleep 0.05; "
                  f"i=$((i+1)); done"]
    if "run" in pair:
        fake = DdiFake()
        extra = hawkbit_section(fake.url, read_timeout_s=30, connect_timeout_s=5)
    sim = SimDevice.create(root / "sim", slot_size=SLOT_SIZE, trust_file=pki.ca_pem, health_checks=health,
                           extra_config=extra)
    sim.boot()  # slot a runs
    if "confirm" in pair:
        # upgrade_available set outside otad on the running slot: `confirm` has an env write to do
        sim.uboot_env().update({"upgrade_available": "1"})
    pristine = root / "pristine"
    shutil.copytree(sim.layout.root, pristine, symlinks=True)
    bundles = {"first": make_bundle(root, pki, "2.0", 1 << 20), "second": make_bundle(root, pki, "3.0", 256 << 10),
               "run": make_bundle(root, pki, "4.0", 1 << 20)}
    return Lane(root, sim, pristine, marks, bundles, fake)


# --------------------------------------------------------------------------- starting the racers


def start(lane: Lane, kind: str, held: bool) -> Racer:
    """`kind` as an otad process; `held`: slowed down and kept near its end until let go."""
    hold = threading.Event()
    args = otad_command() + ["--config", str(lane.sim.layout.config)]
    if kind == "install":
        bundle = lane.bundles["first" if held else "second"]
        racer = Racer(kind, held, *popen(lane, args + ["install", "-" if held else str(bundle.path)], stdin=held),
                      hold.set, bundle)
        if held:
            racer.feeder = threading.Thread(target=feed, args=(racer.proc, bundle.path.read_bytes(), hold),
                                            daemon=True)
            racer.feeder.start()
        return racer
    if kind == "run":
        assert lane.fake is not None
        bundle = lane.bundles["run"]
        if held:
            size = bundle.path.stat().st_size
            lane.fake.fault("artifact", rate_bps=int(size / FEED_S))  # the bundle's head, then the rest stalls
            lane.fake.fault("artifact", rate_bps=int(size / FEED_S), stall_after=size - HOLD_BYTES - HEAD_BYTES,
                            stall_s=TIMEOUT_S, release=hold)
        return Racer(kind, held, *popen(lane, args + ["run", "--once", "--no-reboot"]), hold.set, bundle)
    go = lane.marks / "go"
    if kind == "confirm":
        if not held:
            go.touch()
        return Racer(kind, held, *popen(lane, args + ["confirm", "--no-reboot"]), go.touch)
    assert kind == "env" and not held, "env set has nothing to hold"
    return Racer(kind, held, *popen(lane, args + ["env", "set", f"race_note={lane.trial}"]), hold.set)


def popen(lane: Lane, args: List[str], *, stdin: bool = False) -> Tuple["subprocess.Popen[bytes]", Path]:
    """The process and where its output goes: files, as a pipe nobody reads while the racers run
    could fill up and block them."""
    logs = lane.marks / f"{args[3]}-{time.monotonic_ns()}"
    with open(logs.with_suffix(".out"), "wb") as out, open(logs.with_suffix(".err"), "wb") as err:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=out, stderr=err)
    return proc, logs


def feed(proc: "subprocess.Popen[bytes]", data: bytes, hold: threading.Event) -> None:
    """The bundle through stdin: all but the last HOLD_BYTES over FEED_S, the rest once `hold` is set."""
    assert proc.stdin is not None
    head, tail = data[:-HOLD_BYTES], data[-HOLD_BYTES:]
    step = 32 << 10
    pause = FEED_S / max(1, len(head) // step)
    try:
        for at in range(0, len(head), step):
            proc.stdin.write(head[at:at + step])
            proc.stdin.flush()
            time.sleep(pause)
        hold.wait(TIMEOUT_S)
        proc.stdin.write(tail)
        proc.stdin.close()
    except (BrokenPipeError, ValueError):
        pass  # it stopped reading: it lost the race (or failed; the trial's checks say which)


def finish(lane: Lane, first: Racer, second: Racer) -> None:
    """Wait for both; once the second one has exited, the first one is let go."""
    deadline = time.monotonic() + TIMEOUT_S
    pending = [first, second]
    while pending and time.monotonic() < deadline:
        for racer in list(pending):
            if racer.proc.poll() is not None:
                racer.exited = time.monotonic()
                pending.remove(racer)
                if racer is second:
                    first.let_go()
        time.sleep(0.005)
    for racer in pending:
        racer.proc.kill()
    first.let_go()
    for racer in (first, second):
        racer.proc.wait()
        if racer.feeder is not None:
            racer.feeder.join(5)
        racer.out, racer.err = (racer.logs.with_suffix(end).read_text(errors="replace") for end in (".out", ".err"))
    if pending:
        raise AssertionError(f"a racer did not end in {TIMEOUT_S} s:\n{first.describe()}\n{second.describe()}")


# --------------------------------------------------------------------------- one trial and its checks


def run_trial(lane: Lane, pair: Tuple[str, str], offset_s: float) -> str:
    """`pair[0]` first and `pair[1]` offset_s later (negative: the other way round)."""
    lane.restore()
    first_kind, second_kind = pair if offset_s >= 0 else (pair[1], pair[0])
    first = start(lane, first_kind, held=first_kind != "env")
    time.sleep(abs(offset_s))
    busy_first = first.held and in_operation(lane, first)
    second = start(lane, second_kind, held=False)
    finish(lane, first, second)
    result = check(lane, [first, second])
    if busy_first:  # it held the lock before the second started, and until that one had exited
        assert result.split("/")[1].split(":")[1] in ("busy", "skipped"), \
            f"the second writer did not lose while the first was writing: {result}:\n{first.describe()}\n" \
            f"{second.describe()}"
    return result + (" (second started mid-write)" if busy_first else "")


def in_operation(lane: Lane, racer: Racer) -> bool:
    """Whether `racer` is past taking the writer lock: its image is arriving in slot b, or (confirm)
    its health check runs."""
    if racer.kind == "confirm":
        return (lane.marks / "started").exists()
    assert racer.bundle is not None
    head = racer.bundle.image[:64]
    return lane.sim.read_slot("b", len(head)) == head


def check(lane: Lane, racers: List[Racer]) -> str:
    """The trial's outcome in a word per racer; AssertionError naming both racers otherwise."""
    context = "\n".join(r.describe() for r in racers)
    outcomes = []
    for racer, other in ((racers[0], racers[1]), (racers[1], racers[0])):
        outcomes.append(outcome(lane, racer, other, context))
    installed = sorted((r for r, o in zip(racers, outcomes) if o == "installed"), key=lambda r: r.exited or 0)
    assert "installed" in outcomes or "done" in outcomes, f"nobody won:\n{context}"
    check_slot_and_env(lane, installed[-1].bundle if installed else None, context)
    for racer, result in zip(racers, outcomes):
        if racer.kind == "env":
            note = lane.sim.env().get("race_note")
            assert (note is not None) == (result == "done"), f"env set {result} but race_note={note!r}:\n{context}"
    return "/".join(f"{r.kind}:{o}" for r, o in zip(racers, outcomes))


def outcome(lane: Lane, racer: Racer, other: Racer, context: str) -> str:
    """installed | done (wrote something else) | busy (lost: exit 75, one line) | skipped (daemon)."""
    if racer.kind == "run":
        assert racer.rc == 0, f"the daemon failed:\n{context}"
        assert lane.fake is not None
        sent = [f for f in lane.fake.feedback_log if f.action_id == lane.action]
        if not sent:
            assert lane.fake.actions[lane.action].state == "open", context
            return "skipped"
        details = [d for f in sent for d in f.body["status"].get("details", [])]
        assert any("rebooting to try it" in d for d in details), f"the daemon sent {details}:\n{context}"
        assert all(f.execution == "proceeding" for f in sent), f"the daemon closed the action:\n{context}"
        return "installed"
    if racer.rc == 75:
        line = racer.err.strip()
        match = BUSY.fullmatch(line)
        assert match is not None, f"a loser must print the one busy line and nothing else:\n{context}"
        pid = match.group(1) or match.group(2)
        assert pid is None or int(pid) == other.proc.pid, f"the busy line names pid {pid}:\n{context}"
        return "busy"
    assert racer.rc == 0, f"expected exit 0 or 75:\n{context}"
    return "installed" if racer.kind == "install" else "done"


def check_slot_and_env(lane: Lane, last: Optional[Bundle], context: str) -> None:
    env = lane.sim.env()
    state = StateStore(str(lane.sim.layout.state_dir)).load()
    armed = (env.get("rootpart"), env.get("upgrade_available"), env.get("bootcount"))
    if last is None:
        pristine_b = (lane.pristine / lane.sim.layout.slot_path("b").relative_to(lane.sim.layout.root)).read_bytes()
        assert lane.sim.layout.slot_path("b").read_bytes() == pristine_b, f"slot b written by a loser:\n{context}"
        assert env.get("rootpart") == "2" and not state.trial, f"armed without an install: {armed}:\n{context}"
        return
    slot = lane.sim.read_slot("b", len(last.image))
    assert slot == last.image, (f"slot b does not hold version {last.version}, the last install "
                                f"(head {slot[:40]!r}):\n{context}")
    assert state.phase is Phase.TRIAL_ARMED and state.version == last.version, f"state {state}:\n{context}"
    assert armed == ("3", "1", "0"), f"env {armed} not armed for slot b:\n{context}"


# --------------------------------------------------------------------------- the pairs


@pytest.fixture(scope="module")
def seed() -> int:
    value = int(os.environ.get("OTAD_RACE_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nrace seed: {value} (OTAD_RACE_SEED={value} repeats these offsets)")
    return value


@pytest.mark.parametrize("pair", [("install", "install"), ("install", "run"), ("install", "confirm"),
                                  ("install", "env")], ids=lambda p: "/".join(p))
def test_two_writers_at_random_offsets_never_both_write(tmp_path: Path, pki: Pki, seed: int,
                                                        pair: Tuple[str, str]) -> None:
    rng = random.Random(f"{seed}/{'/'.join(pair)}")
    offsets = [rng.uniform(-MAX_OFFSET_S, MAX_OFFSET_S) for _ in range(TRIALS)]
    lanes = [new_lane(tmp_path / f"lane{n}", pki, pair) for n in range(LANES)]
    results: List[Optional[str]] = [None] * TRIALS
    failures: List[str] = []

    def work(lane: Lane, numbers: List[int]) -> None:
        for n in numbers:
            try:
                results[n] = run_trial(lane, pair, offsets[n])
            except AssertionError as exc:
                failures.append(f"trial {n} (offset {offsets[n]:+.3f} s, seed {seed}): {exc}")
                return

    threads = [threading.Thread(target=work, args=(lane, list(range(i, TRIALS, LANES))))
               for i, lane in enumerate(lanes)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for lane in lanes:
            if lane.fake is not None:
                lane.fake.close()
    assert not failures, failures[0]
    print(f"{'/'.join(pair)}: " + ", ".join(f"{o:+.2f}s {r}" for o, r in zip(offsets, results)))
    lost = sum(1 for r in results if r and ("busy" in r or "skipped" in r))
    assert lost >= 1, f"no trial had the two overlap (seed {seed}): {results}"
