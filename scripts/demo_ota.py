"""The OTA half of scripts/demo: a real goosebit server, `otad mkswu` bundles, a simulated Pi
running the real `otad run`, and what the server shows at each step.

Called by scripts/demo with the demo's keys and root filesystem images; exits non-zero when
any step does not happen as printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from otad.sim.device import SimDevice  # noqa: E402
from tests.goosebit import Goosebit, start_goosebit  # noqa: E402

CONTROLLER = "demo-pi-zero-w"
TEMPLATE = """software = {{
    version = "{version}";
    description = "otad OTA demo";
    rpi0w = {{
        hardware-compatibility = [ "1.0" ];
        stable = {{
            copy1 = {{ images = ( {{ filename = "rootfs.ext4"; device = "/dev/mmcblk0p2"; compressed = "zstd"; }} ); }};
            copy2 = {{ images = ( {{ filename = "rootfs.ext4"; device = "/dev/mmcblk0p3"; compressed = "zstd"; }} ); }};
        }};
    }};
}};
"""
KEEP = ("Downloaded", "installing", "armed", "rebooting", "closed", "after boot", "configData", "final",
        "offer", "action", "failed", "error")


class DemoFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


def say(text: str) -> None:
    print(text, flush=True)


def otad(*args: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run([str(Path(sys.executable).parent / "otad"), *args], capture_output=True, text=True,
                          timeout=300)


def build_bundle(work: Path, version: str, image: Path, key: Path, cert: Path) -> Path:
    art = work / f"art-{version}"
    art.mkdir()
    (art / "rootfs.ext4").symlink_to(image)
    template = work / f"sw-description-{version}"
    template.write_text(TEMPLATE.format(version=version))
    out = work / f"update-{version}.swu"
    done = otad("mkswu", "-s", str(template), "-a", str(art), "-o", str(out), "-k", f"CMS,{key},{cert}")
    check(done.returncode == 0, f"mkswu failed: {done.stderr}")
    return out


def run_once(sim: SimDevice) -> List[str]:
    """One `otad run --once` cycle, as the daemon started by the init script would do it."""
    done = sim.otad("-v", "run", "--once", "--no-reboot", timeout_s=300)
    check(done.returncode == 0, f"otad run failed:\n{done.stderr}")
    lines = [line.replace("otad: INFO: ", "") for line in done.stderr.splitlines()
             if "INFO" in line and any(k in line for k in KEEP)]
    for line in lines:
        say(f"  otad run: {line}")
    return lines


def boot(sim: SimDevice) -> None:
    report = sim.boot()
    for line in report.kernel:
        say(f"  {line}")
    for init in report.inits:
        if init is not None and init.stdout.strip():
            say(f"  init: otad confirm -> {init.stdout.strip().splitlines()[-1]}")
    check(not report.stuck, "the board did not come up")


def server_view(gb: Goosebit) -> dict:  # type: ignore[type-arg]
    device = gb.device(CONTROLLER)
    say(f"  goosebit: device {CONTROLLER}: state {device['last_state']}, sw_version {device['sw_version']}")
    return device


def release(gb: Goosebit, bundle: Path, version: str) -> None:
    software = gb.upload(bundle)
    gb.rollout(software, name=f"demo-{version}")
    say(f"  goosebit: uploaded {bundle.name} (software {software}), rollout demo-{version} created")


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("work", "ca", "key", "cert", "good_image", "bad_image"):
        parser.add_argument(f"--{name.replace('_', '-')}", required=True, type=Path)
    args = parser.parse_args()
    work: Path = args.work / "ota"
    work.mkdir()
    try:
        (work / "goosebit").mkdir()
        with start_goosebit(work / "goosebit") as gb:
            return _demo(gb, work, args)
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr)
        return 1


def _demo(gb: Goosebit, work: Path, args: argparse.Namespace) -> int:
    say(f"\n== 9. a goosebit (hawkBit DDI) server on {gb.base}; a fresh simulated Pi running otad run")
    hawkbit = (f'hawkbit = {{ url = "{gb.base}"; controller_id = "{CONTROLLER}"; poll_min_s = 1.0; '
               f'feedback_interval_s = 1.0; }};\n')
    sim = SimDevice.create(work / "device", slot_size=32 << 20, trust_file=args.ca, extra_config=hawkbit)
    boot(sim)
    run_once(sim)
    device = server_view(gb)
    check(device["hardware"]["model"] == "rpi0w", "the device did not register with its board name")

    say("\n== 10. rollout of 2.0.0 (built with otad mkswu): poll → download → install into slot b → armed")
    release(gb, build_bundle(work, "2.0.0", args.good_image, args.key, args.cert), "2.0.0")
    run_once(sim)
    check(sim.env()["rootpart"] == "3" and sim.env()["upgrade_available"] == "1", "slot b was not armed")
    device = server_view(gb)
    check(device["last_state"] == "Running", "goosebit should still see the action running (no success yet)")

    say("\n== 11. reboot into slot b: U-Boot counts the trial, otad confirm commits it, the daemon reports")
    boot(sim)
    run_once(sim)
    device = server_view(gb)
    check((device["last_state"], device["sw_version"]) == ("Finished", "2.0.0"),
          "goosebit does not show 2.0.0 finished")

    say("\n== 12. rollout of the broken 2.1.0: install into slot a → reboot → watchdog resets → fallback")
    release(gb, build_bundle(work, "2.1.0", args.bad_image, args.key, args.cert), "2.1.0")
    run_once(sim)
    check(sim.env()["rootpart"] == "2", "slot a was not armed for 2.1.0")
    boot(sim)
    check(sim.booted_slot() == "b", "the board is not back on slot b")
    run_once(sim)
    device = server_view(gb)
    log = gb.device_log(CONTROLLER)
    reason = next((line for line in log.splitlines() if "fell back" in line), "")
    say(f"  goosebit: device log: {reason.strip()}")
    check((device["last_state"], device["sw_version"]) == ("Error", "2.0.0") and reason,
          "goosebit does not show the 2.1.0 action failed with the fallback reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
