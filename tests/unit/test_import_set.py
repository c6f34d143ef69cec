"""Which modules each command imports: start-up on a Pi Zero is mostly imports (docs/performance.md),
so `otad --help` and the parsing of any command line import argparse and otad.cli only, and
`otad install` from a file does not import what only the daemon, `otad status`, `otad mkswu` or a
resumed download need. Each check runs a fresh interpreter: pytest itself imports everything."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Set

import pytest

from tests.bundles import gz
from tests.conftest import Device
from tests.pki import Pki
from tests.unit.install.entries import bundle, image

REPO = Path(__file__).resolve().parents[2]

# Never needed to parse a command line or print help (each is tens of ms or more on the board).
NOT_FOR_PARSING = {"typing", "dataclasses", "logging", "json", "subprocess", "inspect", "email", "ctypes",
                   "cryptography", "asn1crypto", "zstandard", "libconf", "requests"}
# Never needed by `otad install FILE`: the daemon, its downloads and their resumable hash states,
# the status report, the bundle builder, delta chunk stores, the simulator; cryptography's X.509
# layer (asn1crypto reads the certificates; its RFC 4514 parser's regexes and the email package
# cost most of `otad install`'s start-up on the board).
NOT_FOR_INSTALL = {"otad.hawkbit", "otad.mkswu", "otad.delta", "otad.sim", "otad.report", "otad.boot.slotstatus",
                   "otad.boot.envcmd", "ctypes", "requests", "urllib3", "http", "cryptography.x509", "email"}


def _new_modules(code: str, *, site: bool = True) -> Set[str]:
    """Run `code` in a fresh interpreter; the modules it imported beyond the interpreter's start-up.
    Without `site`, the interpreter is started with -S (no .pth hooks that import on their own)."""
    prologue = f"import sys; sys.path.insert(0, {str(REPO)!r}); _before = set(sys.modules)\n"
    epilogue = "\nprint(sorted(set(sys.modules) - _before))\n"
    argv = [sys.executable] + ([] if site else ["-S"]) + ["-c", prologue + code + epilogue]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))


def _top(modules: Set[str]) -> Set[str]:
    return {m.split(".")[0] for m in modules}


def _under(modules: Set[str], names: Set[str]) -> List[str]:
    return sorted(m for m in modules if m in names or any(m.startswith(n + ".") for n in names))


def test_help_imports_the_parser_and_nothing_else() -> None:
    code = ("import otad.cli\n"
            "try:\n    otad.cli.main(['--help'])\nexcept SystemExit:\n    pass\n")
    new = _new_modules(code, site=False)
    assert "argparse" in new
    assert sorted(m for m in new if m.split(".")[0] == "otad") == ["otad", "otad.cli"]
    assert not sorted(_top(new) & NOT_FOR_PARSING), sorted(new)


@pytest.mark.parametrize("argv", [
    ["install", "b.swu", "-k", "ca.pem", "-H", "rpi0w:1.0", "-e", "stable,copy1", "--dry-run"],
    ["info", "b.swu", "--json"],
    ["run", "--once"],
    ["status"],
    ["env", "set", "bootcount", "0"],
])
def test_parsing_a_command_line_imports_the_parser_and_nothing_else(argv: List[str]) -> None:
    new = _new_modules(f"import otad.cli\notad.cli.build_parser().parse_args({argv!r})\n", site=False)
    assert sorted(m for m in new if m.split(".")[0] == "otad") == ["otad", "otad.cli"]
    assert not sorted(_top(new) & NOT_FOR_PARSING), sorted(new)


def test_install_imports_only_what_installing_a_file_needs(tmp_path: Path, device: Device, pki: Pki) -> None:
    data = os.urandom(64 << 10)
    path = bundle(tmp_path / "b.swu", pki, [image("rootfs.img.gz", gz(data), "mmcblk0p3", compressed="zlib")])
    argv = ["--config", str(device.config(pki)), "install", str(path)]
    code = (f"from otad.cli import main\nrc = main({argv!r})\n"
            "assert rc == 0, rc\n")
    new = _new_modules(code)
    assert device.slot_bytes()[:len(data)] == data  # it did install
    assert "otad.install.installer" in new and "otad.swu.signature" in new
    assert not _under(new, NOT_FOR_INSTALL)
