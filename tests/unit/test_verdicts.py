"""`otad info` never says yes to what `otad install` refuses.

For every refusal decided before the first byte is written (the bundle's signature, selection,
hardware, hashes required, handlers, version policy, encryption keys, scripts, bootenv rules,
the A/B target), `info` prints `would be refused: <reason>` and `install` fails with
`otad: error: <reason>`: the same reason, the same non-zero exit status, and neither of them
changed a byte of the device (slots, env, otad's state).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import pytest

from otad.errors import REFUSED, VERIFICATION
from otad.state import LastResult, Outcome, Phase, State, StateStore
from tests.bundles import ImageSpec, description, signed_members, write_bundle
from tests.conftest import Device
from tests.pki import Pki, make_pki
from tests.unit.install.entries import bundle as entries_bundle
from tests.unit.install.entries import file as file_entry
from tests.unit.install.entries import script as script_entry
from tests.unit.install.test_install_bootenv import PlainDevice, env_bundle
from tests.unit.test_update_ab import AbDevice, ab_bundle, swupdate_env

USAGE = 2
World = Union[PlainDevice, AbDevice]
SLOT_B = "/dev/mmcblk0p3"
DATA = b"payload " * 500


def plain_bundle(tmp_path: Path, pki: Optional[Pki], images: Sequence[ImageSpec] = (), **desc_kw: object) -> Path:
    images = list(images) or [ImageSpec("rootfs.img", DATA, SLOT_B)]
    work = tmp_path / "sign"
    work.mkdir()
    return write_bundle(tmp_path / "plain.swu", signed_members(description(images, **desc_kw), images, pki, work))


def arts_bundle(tmp_path: Path, pki: Pki, *arts) -> Path:
    return entries_bundle(tmp_path / "arts.swu", pki, list(arts))


def corrupt_env(world: World) -> None:
    assert isinstance(world, PlainDevice)
    blob = bytearray(world.env_file.read_bytes())
    blob[10] ^= 0xFF
    world.env_file.write_bytes(bytes(blob))


def no_fw_env_config(world: World) -> None:
    assert isinstance(world, PlainDevice)
    world.fw_env_config.unlink()


def trial_of_b_running(world: World, tmp_path: Path, pki: Pki, capsys) -> None:
    """Slot b was installed and boots its trial, not yet confirmed: a is its fallback."""
    assert isinstance(world, AbDevice)
    first = tmp_path / "first"
    first.mkdir()
    assert world.otad(capsys, "install", ab_bundle(first, pki))[0] == 0
    assert world.power_on() == "3"


def daemon_holds(phase: Phase) -> Callable[[World], None]:
    """The state the daemon leaves with hawkBit action 42 in `phase` (stopped mid-download,
    waiting for its window, its result not reported yet), and its download journal."""
    def prepare(world: World) -> None:
        assert isinstance(world, AbDevice)
        result = LastResult(Outcome.CONFIRMED, "b", "1.4", "committed", 1.0) if phase is Phase.FINAL_PENDING else None
        state = State(phase, action_id="42", version="1.5", last_result=result)
        (world.root / "state").mkdir()
        (world.root / "state" / "state.json").write_text(json.dumps(state.to_dict()))
        (world.root / "state" / "resume.json").write_text('{"the daemon\'s": "journal"}')
        assert StateStore(str(world.root / "state")).load() == state
    return prepare


@dataclass(frozen=True)
class Case:
    world: str  # "plain" (no slots) or "ab"
    bundle: Callable[[Path, Pki], Path]
    status: int
    reason: str  # a fragment of the one reason both commands give
    args: Tuple[str, ...] = ()
    prepare: Optional[Callable[[World], None]] = None


CASES: Dict[str, Case] = {
    "unsigned": Case("plain", lambda t, p: plain_bundle(t, None), VERIFICATION, "bundle is not signed"),
    "signed by another CA": Case("plain", lambda t, p: plain_bundle(t, make_pki(t, name="other")), VERIFICATION,
                                 "sw-description.sig"),
    "unknown selection": Case("plain", lambda t, p: plain_bundle(t, p, selection=("stable", "copy2")), REFUSED,
                              "copy9", ("-e", "stable,copy9")),
    "hardware not compatible": Case("plain", lambda t, p: plain_bundle(t, p, hw=("2.0",)), REFUSED,
                                    "hardware revision '1.0' of board 'rpi0w' is not in hardware-compatibility"),
    "image without sha256": Case("plain", lambda t, p: plain_bundle(t, p, [ImageSpec("r.img", DATA, SLOT_B,
                                                                                     sha256=None)]),
                                 REFUSED, "no sha256 in sw-description"),
    "no handler for the type": Case("plain", lambda t, p: plain_bundle(t, p, [ImageSpec(
        "r.img", DATA, SLOT_B, extra={"type": '"ubivol"'})]), REFUSED, "no handler for type 'ubivol'"),
    "target does not exist": Case("plain", lambda t, p: plain_bundle(t, p, [ImageSpec("r.img", DATA,
                                                                                      "/dev/mmcblk0p9")]),
                                  REFUSED, "mmcblk0p9"),
    "-N above the bundle's version": Case("plain", lambda t, p: plain_bundle(t, p), REFUSED, "version",
                                          ("-N", "9.0")),
    "-R the bundle's version": Case("plain", lambda t, p: plain_bundle(t, p), REFUSED, "1.0.0", ("-R", "1.0.0")),
    "encrypted without a key": Case("plain", lambda t, p: plain_bundle(t, p, [ImageSpec(
        "r.enc", DATA[:1600], SLOT_B, extra={"encrypted": "true"})]), REFUSED, "no AES key is configured"),
    "a lua script": Case("plain", lambda t, p: arts_bundle(t, p, script_entry("x.lua", "print()", "lua")), REFUSED,
                         "lua"),
    "files: device without filesystem": Case("plain", lambda t, p: arts_bundle(t, p, file_entry(
        "motd", b"x", "/etc/motd", device=SLOT_B)), REFUSED, "device given without filesystem"),
    "bootenv, no fw_env.config": Case("plain", lambda t, p: env_bundle(t, p, '{ name = "k"; value = "v"; }'),
                                      REFUSED, "no U-Boot env is usable here", prepare=no_fw_env_config),
    "bootenv, no valid env copy": Case("plain", lambda t, p: env_bundle(t, p, '{ name = "k"; value = "v"; }'),
                                       REFUSED, "no U-Boot env is usable here", prepare=corrupt_env),
    "bootenv value with a line break": Case("plain", lambda t, p: env_bundle(
        t, p, '{ name = "k"; value = "a\\nb=c"; }'), REFUSED, "value: expected one line"),
    "A/B: an image into the running slot": Case("ab", lambda t, p: ab_bundle(t, p, copy2_device="/dev/mmcblk0p2"),
                                                REFUSED, "it is in use"),
    "A/B: nothing into the target slot": Case("ab", lambda t, p: ab_bundle(t, p, copy2_device="/dev/mmcblk0p1"),
                                              REFUSED, "installs nothing into slot b"),
    "A/B: bootenv boots the running slot": Case("ab", lambda t, p: ab_bundle(t, p, copy2_env=swupdate_env("2")),
                                                REFUSED, "rootpart = '2': the bundle boots slot a"),
    "A/B: bootenv turns the bootcount off": Case("ab", lambda t, p: ab_bundle(t, p, copy2_env=swupdate_env("3", "0")),
                                                 REFUSED, "upgrade_available = '0'"),
    "A/B: bootenv turns the fallback off": Case("ab", lambda t, p: ab_bundle(
        t, p, bootenv='bootenv = ( { name = "bootlimit"; value = "0"; } );'), REFUSED, "bootlimit = '0'"),
    "A/B: -e names the other slot's selection": Case("ab", lambda t, p: ab_bundle(t, p), USAGE,
                                                     "is slot a's selection", ("-e", "stable,copy1")),
    "A/B: the daemon stopped mid-download": Case(
        "ab", lambda t, p: ab_bundle(t, p), REFUSED, "the daemon's update is in progress (state downloading): "
        "hawkBit action 42 (version 1.5) was being downloaded into the inactive slot when the daemon stopped; "
        "start the daemon (otad run) to go on with it, or cancel the action", prepare=daemon_holds(Phase.DOWNLOADING)),
    "A/B: the daemon's install waits for its window": Case(
        "ab", lambda t, p: ab_bundle(t, p), REFUSED, "(state downloaded): hawkBit action 42 (version 1.5) is "
        "installed in the inactive slot and waits for its maintenance window; cancel the action on the server",
        prepare=daemon_holds(Phase.DOWNLOADED)),
    "A/B: the daemon's install is about to be armed": Case(
        "ab", lambda t, p: ab_bundle(t, p), REFUSED, "(state installed): hawkBit action 42",
        prepare=daemon_holds(Phase.INSTALLED)),
    "A/B: the daemon's result is not reported yet": Case(
        "ab", lambda t, p: ab_bundle(t, p), REFUSED, "(state final_pending): the result of hawkBit action 42 "
        "(version 1.5) is not reported to the server yet; start the daemon", prepare=daemon_holds(Phase.FINAL_PENDING)),
}
AB_STATEFUL = {  # cases whose device is prepared by installing first
    "A/B: the target is the fallback of an undecided trial": Case("ab", lambda t, p: ab_bundle(t, p, version="3.0"),
                                                                   REFUSED, "fallback of the undecided trial"),
}


def snapshot(root: Path) -> Dict[str, bytes]:
    """Every file of the device (slots, env, otad's state); lock files come and go."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def make_world(kind: str, tmp_path: Path, pki: Pki) -> Tuple[World, Path]:
    if kind == "plain":
        device = Device(tmp_path / "device")
        device.dev.mkdir(parents=True)
        for name in ("mmcblk0p2", "mmcblk0p3"):
            device.slot(name).write_bytes(b"\xaa" * (4 << 20))
        return PlainDevice(device, pki), device.root
    world = AbDevice(tmp_path / "ab", pki)
    (world.root / "dev" / "mmcblk0p1").write_bytes(b"\xaa" * (1 << 20))  # a boot partition
    return world, world.root


def verdicts(world: World, root: Path, bundle: Path, args: Sequence[str], capsys) -> Tuple[int, str, int, str]:
    """(info's status, its reason, install's status, its reason); asserts neither changed the device."""
    before = snapshot(root)
    rc_info, out, err = world.otad(capsys, "info", bundle, *args)
    assert "Traceback" not in err, err
    refused = [line[len("would be refused: "):] for line in out.splitlines() if line.startswith("would be refused: ")]
    assert snapshot(root) == before, "info changed the device"
    rc_install, _, err = world.otad(capsys, "install", bundle, *args)
    assert "Traceback" not in err, err
    errors = [line[len("otad: error: "):] for line in err.splitlines() if line.startswith("otad: error: ")]
    assert snapshot(root) == before, "a refused install changed the device"
    assert len(refused) <= 1 and len(errors) <= 1, (out, err)
    return rc_info, refused[0] if refused else "", rc_install, errors[0] if errors else ""


@pytest.mark.parametrize("name", sorted(CASES) + sorted(AB_STATEFUL))
def test_info_and_install_give_the_same_refusal_and_install_writes_nothing(tmp_path, pki, capsys, name) -> None:
    case = CASES.get(name) or AB_STATEFUL[name]
    world, root = make_world(case.world, tmp_path, pki)
    if name in AB_STATEFUL:
        trial_of_b_running(world, tmp_path, pki, capsys)
    if case.prepare is not None:
        case.prepare(world)
    rc_info, said_info, rc_install, said_install = verdicts(world, root, case.bundle(tmp_path, pki), case.args,
                                                            capsys)
    assert rc_install == case.status and rc_info == case.status
    assert said_info == said_install and case.reason in said_install, (said_info, said_install)


@pytest.mark.parametrize("kind", ["plain", "ab"])
def test_a_bundle_info_accepts_installs(tmp_path, pki, capsys, kind) -> None:
    world, _ = make_world(kind, tmp_path, pki)
    bundle = plain_bundle(tmp_path, pki) if kind == "plain" else ab_bundle(tmp_path, pki, copy2_env=swupdate_env("3"))
    rc, out, err = world.otad(capsys, "info", bundle)
    assert rc == 0 and out.splitlines()[-1] == "would install: yes", out + err
    rc, out, err = world.otad(capsys, "install", bundle)
    assert rc == 0, err
