"""`otad-sim` / `python -m otad.sim`: create, power on and inspect a simulated device.

Only argument parsing and printing live here; the device is `otad.sim.device`. An OtadError
becomes one line ``otad-sim: error: ...`` on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from otad.errors import EnvCorrupt, OtadError

PROG = "otad-sim"
_SIZE = re.compile(r"([0-9]+)\s*([KMG]?)(?:i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# The env variables that say which slot boots next and whether a trial runs.
_STATUS_VARIABLES = ("rootpart", "upgrade_available", "bootcount", "bootlimit", "otad_prev")
_LOG_TAIL = 5


def parse_size(text: str) -> int:
    """``16M``, ``512K``, ``1G`` (binary units) or plain bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 16M, 512K or 1048576, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="A simulated Raspberry Pi Zero W (A/B, U-Boot "
                                     "bootcount) that otad runs against.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    p = commands.add_parser("create", help="make a new simulated device in DIR (missing or empty)")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--slot-size", type=parse_size, default=16 << 20, metavar="SIZE",
                   help="size of each root slot (default: 16M)")
    p.add_argument("--image-a", type=Path, metavar="FILE", help="slot a's image (default: a good image 1.0)")
    p.add_argument("--trust-file", type=Path, metavar="CA.pem", help="copied to DIR/etc/otad/ca.pem")
    p.add_argument("--hardware", default="rpi0w 1.0", metavar="'BOARD REV'",
                   help="written to DIR/etc/hwrevision (default: 'rpi0w 1.0')")
    p.add_argument("--redundant-env", action="store_true", help="two env copies (uboot.env + uboot-redund.env)")
    p.add_argument("--health", action="append", default=[], metavar="CMD",
                   help="a health check for otad.conf (repeatable)")
    p.add_argument("--extra-config", type=Path, metavar="FILE", help="text appended to otad.conf")
    p.set_defaults(run=_cmd_create)
    p = commands.add_parser("boot", help="power the device on: U-Boot, kernel, then 'otad confirm'")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.add_argument("--max-boots", type=int, default=10, metavar="N",
                   help="give up after N U-Boot passes (default: 10)")
    p.add_argument("--no-init", action="store_true", help="do not run 'otad confirm' once up")
    p.set_defaults(run=_cmd_boot)
    p = commands.add_parser("status", help="booted slot, the env's A/B variables, slots, boot log")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.set_defaults(run=_cmd_status)
    p = commands.add_parser("env", help="print the U-Boot env (like fw_printenv)")
    p.add_argument("dir", metavar="DIR", type=Path)
    p.set_defaults(run=_cmd_env)
    return parser


def _cmd_create(args: argparse.Namespace) -> int:
    from otad.sim.device import SimDevice

    extra = ""
    if args.extra_config is not None:
        try:
            extra = args.extra_config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OtadError(f"cannot read extra config: {exc}", where=str(args.extra_config)) from exc
    device = SimDevice.create(args.dir, slot_size=args.slot_size, image_a=args.image_a,
                              trust_file=args.trust_file, hardware=args.hardware,
                              redundant_env=args.redundant_env, health_checks=args.health,
                              extra_config=extra)
    print(f"created simulated device {device.layout.root}")
    print(f"  otad --config {device.layout.config} ...")
    return 0


def _cmd_boot(args: argparse.Namespace) -> int:
    from otad.sim.device import SimDevice, describe_decision

    device = SimDevice.open(args.dir)
    report = device.boot(run_init=not args.no_init, max_boots=args.max_boots)
    for decision, kernel, init in zip(report.boots, report.kernel, report.inits):
        for line in decision.console:
            if line.startswith(("***", "Warning")):
                print(f"U-Boot: {line}")
        print(f"U-Boot: {describe_decision(decision)}")
        print(f"kernel: {kernel}")
        if init is not None:
            _print_init(init.rc, init.stdout, init.stderr)
    if report.stuck:
        print(f"{PROG}: error: the board never came up ({len(report.boots)} U-Boot passes, "
              f"{report.watchdog_resets} watchdog resets)", file=sys.stderr)
        return 1
    extra = "".join(text for text, on in ((f", {report.reboots} reboots by init", report.reboots),
                                          (", fell back", report.fell_back)) if on)
    print(f"up on slot {report.slot_name} after {len(report.boots)} U-Boot passes "
          f"({report.watchdog_resets} watchdog resets{extra})")
    return 0


def _print_init(rc: int, stdout: str, stderr: str) -> None:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if rc == 0:
        print(f"init: otad confirm -> {lines[0] if lines else '(no output)'}")
        for line in lines[1:]:
            print(f"init:   {line}")
        return
    errors = [line for line in stderr.splitlines() if line.strip()]
    print(f"init: otad confirm failed (exit {rc}): {errors[-1] if errors else '(no output)'}")
    print("init: (S98otad starts the daemon anyway)")


def _cmd_status(args: argparse.Namespace) -> int:
    from otad.sim.device import SLOTS, SimDevice, describe_image

    device = SimDevice.open(args.dir)
    booted = device.booted_slot()
    print(f"device:  {device.layout.root}")
    print(f"booted:  {'slot ' + booted if booted else 'off (never booted, or stuck)'}")
    try:
        env = device.env()
        shown = " ".join(f"{name}={env[name]}" for name in _STATUS_VARIABLES if name in env)
        print(f"env:     {shown}")
    except EnvCorrupt as exc:
        print(f"env:     no valid copy ({exc.what}); U-Boot boots its default env")
    for slot in SLOTS.slots:
        print(f"slot {slot.name}:  {slot.device} boot value {slot.boot_value}: "
              f"{describe_image(device.read_slot(slot.name))}")
    lines = device.boot_log()
    print(f"boot log ({min(len(lines), _LOG_TAIL)} of {len(lines)} lines):")
    for line in lines[-_LOG_TAIL:]:
        print(f"  {line}")
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    from otad.boot.envtext import format_env_text
    from otad.sim.device import SimDevice

    sys.stdout.write(format_env_text(SimDevice.open(args.dir).env()))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except OtadError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
