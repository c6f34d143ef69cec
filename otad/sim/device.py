"""A simulated Raspberry Pi Zero W: a file-backed SD card (slots p2/p3, FAT uboot.env, otad.conf).

Owns the sim's layout, creating it, and `boot()`: U-Boot passes (`UBootEmulator`), kernels that
hang on a bad image until the watchdog resets the board, then S98otad's ``otad confirm``. Env bytes
are envimage's, U-Boot's rules uboot.py's, argparse and printing __main__.py's.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from otad.boot.envimage import build_image
from otad.boot.fwenvconfig import EnvLayout, load_fw_env_config
from otad.boot.slots import Slot, SlotTable, booted_slot
from otad.boot.ubootenv import UBootEnv
from otad.errors import ConfigError, EnvCorrupt, OtadError, SlotError
from otad.sim.uboot import BootDecision, UBootEmulator

log = logging.getLogger(__name__)

__all__ = [
    "BAD_MARKER",
    "DEFAULT_ENV",
    "GOOD_MARKER",
    "SLOTS",
    "BootReport",
    "InitResult",
    "SimDevice",
    "SimLayout",
    "contains_good_marker",
    "describe_decision",
    "describe_image",
    "make_image",
    "otad_command",
    "otad_confirm",
]

# A slot image "boots" when it starts with GOOD_MARKER: the sim's stand-in for a kernel and
# rootfs that come up. Anything else (zeros, BAD_MARKER, a torn write) hangs the kernel.
GOOD_MARKER = b"OTAD-SIM-IMAGE ok\n"
BAD_MARKER = b"OTAD-SIM-IMAGE bad\n"
HEAD_BYTES = 1 << 20  # what the "kernel" reads of its slot
ENV_SIZE = 0x4000  # rpi_0_w_defconfig CONFIG_ENV_SIZE
SLOT_VARIABLE = "rootpart"
MIN_SLOT_SIZE = 64 << 10
MAX_SLOT_SIZE = 4 << 30
CMDLINE_TEMPLATE = "console=ttyS0 root=/dev/mmcblk0p{n} otad.rootpart={n} rootwait"
# S98otad gives confirm CONFIRM_TIMEOUT=300 s through timeout(1), which exits 124 when it fires.
CONFIRM_TIMEOUT_S = 300.0
TIMEOUT_RC = 124
WATCHDOG_RESET = "watchdog reset"
INIT_REBOOT = "reboot"

SLOTS = SlotTable((
    Slot("a", "/dev/mmcblk0p2", "2", ("stable", "copy1")),
    Slot("b", "/dev/mmcblk0p3", "3", ("stable", "copy2")),
))

# The altbootcmd given at the top of etc/boot.cmd, and a bootcmd whose bootargs are what
# boot() writes to proc/cmdline. No backslashes or empty values (U-Boot's env import would mangle them).
ALTBOOTCMD = (
    'if test "${rootpart}" = "2"; then setenv rootpart 3; else setenv rootpart 2; fi; '
    "setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd"
)
BOOTCMD = (
    "setenv bootargs console=ttyS0 root=/dev/mmcblk0p${rootpart} otad.rootpart=${rootpart} rootwait; "
    "load mmc ${mmcdev}:${rootpart} ${kernel_addr_r} boot/zImage && "
    "load mmc ${mmcdev}:${rootpart} ${fdt_addr_r} boot/${fdtfile} && "
    "bootz ${kernel_addr_r} - ${fdt_addr_r}"
)
# The env written at create(), which is also the compiled-in default U-Boot falls back to on a
# bad CRC (`make u-boot-initial-env` of a U-Boot built for otad): it boots the known-good slot a.
DEFAULT_ENV: Mapping[str, str] = {
    "altbootcmd": ALTBOOTCMD,
    "arch": "arm",
    "baudrate": "115200",
    "board": "rpi",
    "bootcmd": BOOTCMD,
    "bootcount": "0",
    "bootdelay": "1",
    "bootlimit": "3",
    "cpu": "arm1176",
    "fdt_addr_r": "0x02600000",
    "fdtfile": "bcm2835-rpi-zero-w.dtb",
    "kernel_addr_r": "0x00080000",
    "mmcdev": "0",
    SLOT_VARIABLE: "2",
    "soc": "bcm283x",
    "upgrade_available": "0",
    "vendor": "raspberrypi",
}

_NOT_A_SIM_HINT = "create one with 'otad-sim create DIR'"


# --------------------------------------------------------------------------- images


def contains_good_marker(data: bytes) -> bool:
    """True if `data` (a slot's first MiB) starts with GOOD_MARKER. Only offset 0 counts, as a
    kernel header sits at a fixed place: a marker further in (say, the tail of an older image
    behind a short or torn write) does not make the slot boot."""
    return data.startswith(GOOD_MARKER)


def make_image(version: str, *, good: bool = True, size: int = 1 << 20) -> bytes:
    """A slot image of `size` bytes: GOOD_MARKER (or BAD_MARKER), ``version=VERSION\\n``, zeros."""
    if not version or not version.isprintable() or not version.isascii():
        raise SlotError(f"image version: expected printable ASCII text, got {version!r}")
    head = (GOOD_MARKER if good else BAD_MARKER) + f"version={version}\n".encode("ascii")
    if size < len(head):
        raise SlotError(f"image size: expected at least {len(head)} bytes for {version!r}, got {size}")
    return head + bytes(size - len(head))


def describe_image(data: bytes) -> str:
    """One phrase for what a slot holds: ``good image 1.0``, ``bad image 2.0``, ``empty (zeros)``."""
    for marker, kind in ((GOOD_MARKER, "good"), (BAD_MARKER, "bad")):
        if data.startswith(marker):
            line = data[len(marker):].split(b"\n", 1)[0]
            version = line[len(b"version="):] if line.startswith(b"version=") else b""
            shown = version.decode("ascii", "replace") if version else "(no version)"
            return f"{kind} image {shown}"
    if not data.strip(b"\0"):
        return "empty (zeros)"
    return "unknown data (does not boot)"


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class SimLayout:
    """Where each part of the simulated device lives under `root` (an absolute path)."""

    root: Path

    @property
    def dev_dir(self) -> Path:
        return self.root / "dev"

    def slot_path(self, name: str) -> Path:
        """dev/mmcblk0p2 for slot a, dev/mmcblk0p3 for slot b; SlotError for another name."""
        slot = SLOTS.by_name(name)
        return self.dev_dir / slot.device[len("/dev/"):]

    @property
    def env_path(self) -> Path:
        return self.root / "boot" / "uboot.env"

    @property
    def env_redund_path(self) -> Path:
        """The second copy of a redundant env (U-Boot's ENV_FAT_FILE_REDUND default name)."""
        return self.root / "boot" / "uboot-redund.env"

    @property
    def fw_env_config(self) -> Path:
        return self.root / "etc" / "fw_env.config"

    @property
    def cmdline(self) -> Path:
        return self.root / "proc" / "cmdline"

    @property
    def state_dir(self) -> Path:
        return self.root / "var" / "lib" / "otad"

    @property
    def config(self) -> Path:
        return self.root / "etc" / "otad" / "otad.conf"

    @property
    def hwrevision(self) -> Path:
        return self.root / "etc" / "hwrevision"

    @property
    def lock_file(self) -> Path:
        return self.root / "run" / "fw_printenv.lock"

    @property
    def boot_log(self) -> Path:
        """One line per U-Boot pass, appended by boot()."""
        return self.root / "boot.log"

    @property
    def reboot_flag(self) -> Path:
        """Created by otad's system.reboot_command in the sim: boot() then reboots the board."""
        return self.root / "run" / "otad-sim.reboot"

    @property
    def ca_file(self) -> Path:
        """install.trust_file; exists only if create() got a trust_file."""
        return self.root / "etc" / "otad" / "ca.pem"


# --------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class InitResult:
    """What the init step printed and returned (rc 124: killed after S98otad's timeout)."""

    rc: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class BootReport:
    """One power-on. `boots` holds every U-Boot pass (watchdog resets and reboots by init
    included), `kernel` one phrase per pass saying what the kernel did. `slot_value`/`slot_name`
    are the last pass's (slot_name "" if its value is no slot). `init` is the last init's result,
    `inits` one per pass (None where no init ran). `stuck`: no pass ended with the board up.
    `env` is the stored env after init ({} when no copy is valid: U-Boot then ran on its
    compiled-in default, which it does not save)."""

    boots: Tuple[BootDecision, ...]
    kernel: Tuple[str, ...]
    slot_value: str
    slot_name: str
    watchdog_resets: int
    init: Optional[InitResult]
    env: Dict[str, str]
    stuck: bool = False
    inits: Tuple[Optional[InitResult], ...] = ()

    @property
    def reboots(self) -> int:
        """Reboots init asked for (otad's reboot_command), each starting another pass."""
        return sum(1 for k in self.kernel if k.endswith(INIT_REBOOT))

    @property
    def fell_back(self) -> bool:
        """altbootcmd ran in one of the passes."""
        return any(d.used_altbootcmd for d in self.boots)


def describe_decision(decision: BootDecision, *, variable: str = SLOT_VARIABLE) -> str:
    """One line for a U-Boot pass: ``rootpart=3 bootcount=2 (trial)``."""
    value = decision.slot_value or "(unset)"
    tags: List[str] = ["default env"] if decision.default_env else []
    if decision.used_altbootcmd:
        text = f"bootcount={decision.bootcount} > bootlimit -> altbootcmd: {variable}={value}"
        tags.append("fallback, env saved")
    elif decision.env_written:
        text = f"{variable}={value} bootcount={decision.bootcount}"
        tags.append("trial")
    else:
        text = f"{variable}={value}"
        tags.append("no trial, bootcount not saved")
    return f"{text} ({', '.join(tags)})"


# --------------------------------------------------------------------------- the device


class SimDevice:
    """A simulated Pi Zero W under `layout.root`: make one with `create`, reopen it with `open`."""

    def __init__(self, layout: SimLayout) -> None:
        self.layout = layout

    # -- making and finding one

    @classmethod
    def create(
        cls,
        root: Path,
        *,
        slot_size: int = 16 << 20,
        image_a: Optional[Path] = None,
        trust_file: Optional[Path] = None,
        hardware: str = "rpi0w 1.0",
        redundant_env: bool = False,
        health_checks: Sequence[str] = (),
        extra_config: str = "",
    ) -> "SimDevice":
        """A new device in `root` (missing or empty): slot a holds `image_a` or a good image,
        slot b zeros (unbootable), the env is DEFAULT_ENV, otad.conf points into `root`."""
        layout = SimLayout(_checked_root(root))
        _check_slot_size(slot_size)
        board, revision = _parse_hardware(hardware)
        image = _read_file(image_a, "image") if image_a is not None else make_image("1.0")
        if len(image) > slot_size:
            raise SlotError(f"image: {len(image)} bytes do not fit slot a ({slot_size} bytes)", where=str(image_a))
        trust = _read_file(trust_file, "trust file") if trust_file is not None else None
        try:
            _make_dirs(layout)
            _write_slot_file(layout.slot_path("a"), image, slot_size)
            _write_slot_file(layout.slot_path("b"), b"", slot_size)
            _write_env(layout, redundant_env)
            layout.hwrevision.write_text(f"{board} {revision}\n", encoding="utf-8")
            if trust is not None:
                layout.ca_file.write_bytes(trust)
            layout.config.write_text(_otad_conf(layout, health_checks, extra_config), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot create the simulated device: {exc.strerror or exc}",
                              where=exc.filename or str(layout.root)) from exc
        log.info("sim: created %s (slots of %d bytes, %s env)", layout.root, slot_size,
                 "redundant" if redundant_env else "single")
        return cls(layout)

    @classmethod
    def open(cls, root: Path) -> "SimDevice":
        """The device `create` made in `root`; ConfigError if `root` is not one."""
        layout = SimLayout(Path(os.path.abspath(root)))
        if not layout.root.is_dir():
            raise ConfigError(f"not a simulated device: no such directory; {_NOT_A_SIM_HINT}",
                              where=str(layout.root))
        needed = (layout.config, layout.fw_env_config, layout.slot_path("a"), layout.slot_path("b"))
        missing = [p for p in needed if not p.is_file()]
        if missing:
            shown = os.path.relpath(missing[0], layout.root)
            raise ConfigError(f"not a simulated device: {shown} is missing; {_NOT_A_SIM_HINT}",
                              where=str(layout.root))
        return cls(layout)

    # -- looking at it

    def uboot_env(self) -> UBootEnv:
        """The env as the sim's fw_env.config lays it out, under the sim's fw_printenv lock."""
        layout: EnvLayout = load_fw_env_config(str(self.layout.fw_env_config))
        return UBootEnv(layout, lock_path=str(self.layout.lock_file))

    def env(self) -> Dict[str, str]:
        """The stored env's variables; EnvCorrupt if no copy is valid."""
        return dict(self.uboot_env().read().variables)

    def booted_slot(self) -> Optional[str]:
        """The running slot's name from proc/cmdline, as otad finds it; None while the board is
        off (never booted, or stuck)."""
        try:
            cmdline = self.layout.cmdline.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SlotError(f"cannot read: {exc.strerror or exc}", where=str(self.layout.cmdline)) from exc
        found = booted_slot(SLOTS, cmdline=cmdline, mountinfo=None, device_dir=str(self.layout.dev_dir),
                            partuuid_dir=str(self.layout.dev_dir / "disk" / "by-partuuid"))
        return found.slot.name

    def read_slot(self, name: str, size: int = HEAD_BYTES) -> bytes:
        """The first `size` bytes of slot `name`."""
        path = self.layout.slot_path(name)
        try:
            with open(path, "rb") as f:
                return f.read(size)
        except OSError as exc:
            raise SlotError(f"cannot read slot {name}: {exc.strerror or exc}", where=str(path)) from exc

    def boot_log(self) -> List[str]:
        """The boot log's lines, oldest first."""
        try:
            return self.layout.boot_log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", where=str(self.layout.boot_log)) from exc

    # -- changing it

    def write_slot(self, name: str, data: bytes) -> None:
        """Make slot `name` hold `data` followed by zeros (as after writing an image and wiping
        the rest); SlotError if it does not fit."""
        path = self.layout.slot_path(name)
        try:
            size = path.stat().st_size
            if len(data) > size:
                raise SlotError(f"{len(data)} bytes do not fit slot {name} ({size} bytes)", where=str(path))
            _write_slot_file(path, data, size)
        except OSError as exc:
            raise SlotError(f"cannot write slot {name}: {exc.strerror or exc}", where=str(path)) from exc

    def otad(self, *args: str, check: bool = False,
             timeout_s: Optional[float] = CONFIRM_TIMEOUT_S) -> "subprocess.CompletedProcess[str]":
        """Run ``otad --config <this device's otad.conf> ARGS`` with the otad next to
        sys.executable (``python -m otad`` if there is none). A timeout gives rc 124, as
        timeout(1) does; with `check`, a non-zero rc raises OtadError quoting otad's stderr."""
        command = otad_command() + ["--config", str(self.layout.config), *args]
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            done = subprocess.CompletedProcess(command, TIMEOUT_RC, _text(exc.stdout),
                                               _text(exc.stderr) + f"otad-sim: killed after {timeout_s} s\n")
        except OSError as exc:
            raise ConfigError(f"cannot run otad: {exc.strerror or exc}", where=command[0]) from exc
        if check and done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise OtadError(f"'otad {' '.join(args)}' exited {done.returncode}: {last}",
                            where=str(self.layout.root))
        return done

    # -- power-on

    def boot(
        self,
        *,
        healthy: Callable[[bytes], bool] = contains_good_marker,
        init: Optional[Callable[["SimDevice"], InitResult]] = None,
        run_init: bool = True,
        max_boots: int = 10,
    ) -> BootReport:
        """One power-on: U-Boot passes until a kernel comes up (its slot's first MiB passes
        `healthy`) or `max_boots` passes are used up (stuck). A hung kernel is reset by the
        watchdog, which starts the next pass. Once up, `init` runs (None: `otad_confirm`, the
        first step of S98otad) unless `run_init` is false; if it ran the sim's reboot_command,
        the board reboots into the next pass, as a real one would."""
        if max_boots < 1:
            raise ConfigError(f"max_boots: expected at least 1, got {max_boots}")
        emulator = UBootEmulator(self.uboot_env(), slot_variable=SLOT_VARIABLE, default_env=DEFAULT_ENV)
        init_step = (init or otad_confirm) if run_init else None
        passes: List[_Pass] = []
        self._power_off()
        while len(passes) < max_boots and (not passes or passes[-1].next_pass):
            passes.append(self._one_pass(emulator.boot(), healthy, init_step))
        up = not passes[-1].next_pass and passes[-1].slot is not None
        if not up:
            self._power_off()
        inits = tuple(p.init for p in passes)
        last = passes[-1]
        return BootReport(
            boots=tuple(p.decision for p in passes),
            kernel=tuple(p.kernel for p in passes),
            slot_value=last.decision.slot_value,
            slot_name=last.slot.name if last.slot else "",
            watchdog_resets=sum(1 for p in passes if p.kernel.endswith(WATCHDOG_RESET)),
            init=next((r for r in reversed(inits) if r is not None), None),
            env=self._env_or_empty(),
            stuck=not up,
            inits=inits,
        )

    def _one_pass(self, decision: BootDecision, healthy: Callable[[bytes], bool],
                  init: Optional[Callable[["SimDevice"], InitResult]]) -> "_Pass":
        """What follows one U-Boot pass: a kernel that hangs or comes up, then init."""
        slot = SLOTS.by_boot_value(decision.slot_value)
        if slot is None:
            # bootcmd's load fails and U-Boot sits at its prompt, petting the watchdog itself.
            kernel = (f"no slot has {SLOT_VARIABLE}={decision.slot_value!r}: bootcmd fails, "
                      "U-Boot waits at its prompt (no watchdog reset)")
            self._log_pass(decision, kernel)
            return _Pass(decision, None, kernel, None, next_pass=False)
        self._write_cmdline(slot)
        if not healthy(self.read_slot(slot.name)):
            kernel = f"slot {slot.name} image not healthy -> hang -> {WATCHDOG_RESET}"
            self._log_pass(decision, kernel)
            return _Pass(decision, slot, kernel, None, next_pass=True)
        kernel = f"slot {slot.name} up"
        if init is None:
            self._log_pass(decision, kernel)
            return _Pass(decision, slot, kernel, None, next_pass=False)
        result = init(self)
        reboot = self._take_reboot_request()
        if reboot:
            kernel += f", init -> {INIT_REBOOT}"
        self._log_pass(decision, f"{kernel} | init: exit {result.rc}")
        return _Pass(decision, slot, kernel, result, next_pass=reboot)

    def _take_reboot_request(self) -> bool:
        """True (once) if init ran the sim's reboot_command since the last check."""
        try:
            self.layout.reboot_flag.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ConfigError(f"cannot remove: {exc.strerror or exc}", where=str(self.layout.reboot_flag)) from exc
        return True

    def _power_off(self) -> None:
        """No kernel runs: /proc/cmdline is gone, and so is a reboot request (it lived in /run)."""
        for path in (self.layout.cmdline, self.layout.reboot_flag):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ConfigError(f"cannot remove: {exc.strerror or exc}", where=str(path)) from exc

    def _write_cmdline(self, slot: Slot) -> None:
        path = self.layout.cmdline
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(CMDLINE_TEMPLATE.format(n=slot.boot_value) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write: {exc.strerror or exc}", where=str(path)) from exc

    def _log_pass(self, decision: BootDecision, kernel: str) -> None:
        path = self.layout.boot_log
        number = len(self.boot_log()) + 1
        line = f"boot {number}: U-Boot {describe_decision(decision)} | kernel: {kernel}\n"
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            raise ConfigError(f"cannot append: {exc.strerror or exc}", where=str(path)) from exc

    def _env_or_empty(self) -> Dict[str, str]:
        try:
            return self.env()
        except EnvCorrupt:
            return {}


@dataclass(frozen=True)
class _Pass:
    """One U-Boot pass and what followed; `next_pass`: the board resets or reboots."""

    decision: BootDecision
    slot: Optional[Slot]
    kernel: str
    init: Optional[InitResult]
    next_pass: bool


def otad_confirm(device: SimDevice) -> InitResult:
    """The first step of init.d/S98otad: ``otad --config CONFIG confirm``, 300 s at most."""
    done = device.otad("confirm")
    return InitResult(done.returncode, done.stdout, done.stderr)


# --------------------------------------------------------------------------- helpers


def _checked_root(root: Path) -> Path:
    """`root` made absolute; it must be missing or empty and fit fw_env.config and libconfig."""
    path = Path(os.path.abspath(root))
    text = str(path)
    if any(c.isspace() or c in '"\\' or not c.isprintable() for c in text):
        raise ConfigError("expected a directory path without blanks, quotes or backslashes "
                          "(fw_env.config splits at blanks)", where=text)
    if path.exists():
        if not path.is_dir():
            raise ConfigError("expected a directory, got a file", where=text)
        if any(path.iterdir()):
            raise ConfigError("not empty: refusing to create a simulated device over existing files",
                              where=text)
    return path


def _check_slot_size(size: int) -> None:
    if not MIN_SLOT_SIZE <= size <= MAX_SLOT_SIZE:
        raise ConfigError(f"slot size: expected {MIN_SLOT_SIZE}..{MAX_SLOT_SIZE} bytes, got {size}")


def _parse_hardware(hardware: str) -> Tuple[str, str]:
    """"board revision" (as /etc/hwrevision holds it) or "board:revision"."""
    words = hardware.replace(":", " ").split()
    if len(words) != 2 or not all(w.isprintable() for w in words):
        raise ConfigError(f"hardware: expected 'board revision' such as 'rpi0w 1.0', got {hardware!r}")
    return words[0], words[1]


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", where=str(path)) from exc


def _make_dirs(layout: SimLayout) -> None:
    for directory in (layout.dev_dir, layout.env_path.parent, layout.config.parent, layout.cmdline.parent,
                      layout.state_dir, layout.lock_file.parent):
        directory.mkdir(parents=True, exist_ok=True)


def _write_slot_file(path: Path, data: bytes, size: int) -> None:
    """`data` at offset 0, zeros up to `size` (sparse: truncate only)."""
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(size)


def _write_env(layout: SimLayout, redundant: bool) -> None:
    """uboot.env (and uboot-redund.env), as mkenvimage -r -p 0 would make them for the card image;
    copy 0 carries the higher flags, so both are valid and copy 0 is active."""
    paths = [layout.env_path] + ([layout.env_redund_path] if redundant else [])
    for index, path in enumerate(paths):
        path.write_bytes(build_image(DEFAULT_ENV, ENV_SIZE, redundant=redundant, flags=1 - index))
    lines = "".join(f"{p}\t0x0\t{ENV_SIZE:#x}\n" for p in paths)
    layout.fw_env_config.write_text(
        "# Written by otad-sim: the simulated FAT boot partition's U-Boot env.\n"
        "# device\toffset\tenv-size\n" + lines, encoding="utf-8")


def _quoted(text: str) -> str:
    """A libconfig string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _otad_conf(layout: SimLayout, health_checks: Sequence[str], extra_config: str) -> str:
    slots = ",\n".join(
        f"    {{ name = {_quoted(s.name)}; device = {_quoted(s.device)}; boot_value = {_quoted(s.boot_value)}; "
        f"selection = {_quoted(','.join(s.selection or ()))}; }}"
        for s in SLOTS.slots
    )
    checks = ", ".join(_quoted(c) for c in health_checks)
    text = f"""// otad.conf of the simulated device in {layout.root} (written by otad-sim create).
system = {{
    state_dir = {_quoted(str(layout.state_dir))};
    reboot_command = {_quoted("touch " + str(layout.reboot_flag))};  // never the host's reboot
    device_dir = {_quoted(str(layout.dev_dir))};
    hwrevision_file = {_quoted(str(layout.hwrevision))};
}};

install = {{
    trust_file = {_quoted(str(layout.ca_file))};
}};

bootloader = {{
    fw_env_config = {_quoted(str(layout.fw_env_config))};
    lock_file = {_quoted(str(layout.lock_file))};
    slot_variable = "{SLOT_VARIABLE}";
    bootlimit = {DEFAULT_ENV["bootlimit"]};
    cmdline = {_quoted(str(layout.cmdline))};
    mountinfo = "";  // the sim's root is mounted nowhere: the command line decides
    partuuid_dir = {_quoted(str(layout.dev_dir / "disk" / "by-partuuid"))};
}};

slots = (
{slots}
);

health = {{
    checks = ( {checks} );
}};

watchdog = {{
    enabled = false;  // the sim models a hung boot and its watchdog reset itself
}};
"""
    if extra_config:
        text += "\n" + extra_config + ("" if extra_config.endswith("\n") else "\n")
    return text


def otad_command() -> List[str]:
    script = Path(sys.executable).parent / "otad"  # not resolved: a venv's python is a symlink
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "otad"]


def _text(output: Optional[object]) -> str:
    """TimeoutExpired's partial output: bytes even under text=True on some Pythons."""
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode("utf-8", "replace")
    return str(output)
