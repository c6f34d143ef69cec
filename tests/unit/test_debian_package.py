"""debian/ agrees with the code: the package's version is otad's, its Depends name every
third-party module otad imports (as Debian packages), and the init script and unit it installs
are the repository's own files. The package itself is built and installed by tests/deb."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path
from typing import Set

import pytest

import otad
from tests.conftest import one_error, run_cli

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"
# Module otad imports -> the Debian package that provides it.
DEBIAN_PACKAGES = {"asn1crypto": "python3-asn1crypto", "certifi": "python3-certifi", "cryptography": "python3-cryptography",
                   "libconf": "python3-libconf", "requests": "python3-requests", "urllib3": "python3-urllib3",
                   "zstandard": "python3-zstandard", "systemd": "python3-systemd"}
OPTIONAL = {"systemd"}  # imported inside try/except ImportError (otad/notify.py): Suggests
# Shared libraries otad loads with ctypes (each with a fallback, so Recommends) -> Debian package;
# None: one python3 itself depends on.
SHARED_LIBRARIES = {"crypto": None, "c": None, "zck": "libzck1"}


def third_party_imports() -> Set[str]:
    """Top-level modules imported anywhere in otad/ outside the simulator (not in the package)."""
    found = set()
    for path in (REPO / "otad").rglob("*.py"):
        if "sim" in path.relative_to(REPO / "otad").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found.update(name.split(".")[0] for name in names)
    return {name for name in found if name not in sys.stdlib_module_names and name not in ("otad", "__future__")}


def ctypes_libraries() -> Set[str]:
    """Names otad hands to ctypes.util.find_library outside the simulator."""
    found = set()
    for path in (REPO / "otad").rglob("*.py"):
        if "sim" not in path.relative_to(REPO / "otad").parts:
            found.update(re.findall(r'find_library\("([\w+.-]+)"\)', path.read_text()))
    return found


def control_field(name: str) -> Set[str]:
    text = (DEBIAN / "control").read_text().split("\nPackage: otad\n", 1)[1]
    match = re.search(rf"^{name}:(.*(?:\n .*)*)", text, re.M)
    assert match, f"debian/control: no {name} for otad"
    return {re.split(r"[\s(]", item.strip())[0] for item in match.group(1).split(",") if item.strip()}


def test_changelog_version_is_otads_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    version = re.match(r"otad \(([^)]+)\)", first)
    assert version, first
    assert re.sub(r"-[^-]+$", "", version.group(1)) == otad.__version__


def test_depends_names_every_imported_module() -> None:
    imports = third_party_imports()
    assert imports <= set(DEBIAN_PACKAGES), f"no Debian package known for {imports - set(DEBIAN_PACKAGES)}"
    depends, suggests = control_field("Depends"), control_field("Suggests")
    for module in imports:
        assert DEBIAN_PACKAGES[module] in (suggests if module in OPTIONAL else depends), module
    assert "python3" in depends


def test_recommends_names_every_library_loaded_with_ctypes() -> None:
    libraries = ctypes_libraries()
    assert libraries and libraries <= set(SHARED_LIBRARIES), f"unknown: {libraries - set(SHARED_LIBRARIES)}"
    recommends = control_field("Recommends")
    for library in libraries:
        assert SHARED_LIBRARIES[library] is None or SHARED_LIBRARIES[library] in recommends, library


def test_init_script_and_unit_are_the_repositorys() -> None:
    assert (DEBIAN / "otad.init").resolve() == (REPO / "init.d" / "S98otad").resolve()
    assert (DEBIAN / "otad.service").resolve() == (REPO / "init.d" / "otad.service").resolve()
    header = (REPO / "init.d" / "S98otad").read_text().split("### BEGIN INIT INFO\n", 1)[1].split("### END")[0]
    fields = dict(re.match(r"# ([\w-]+):\s+(.*)", line).groups() for line in header.splitlines()  # type: ignore[union-attr]
                  if re.match(r"# [\w-]+:", line))
    assert fields["Provides"] == "otad"
    assert fields["Default-Start"] == "2 3 4 5" and fields["Default-Stop"] == "0 1 6"
    assert "$remote_fs" in fields["Required-Start"]


def test_unit_does_not_restart_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`otad run` without a hawkBit server exits 2 (configuration error), and otad.service does
    not restart on 2: restarting every RestartSec cannot fix a configuration."""
    config = tmp_path / "otad.conf"  # the package's configuration, as installed: no hawkbit.url
    config.write_text((REPO / "etc" / "otad.conf").read_text().replace('"/var/lib/otad"', f'"{tmp_path}"')
                      .replace('"/run/otad"', f'"{tmp_path}"'))
    code, _, err = run_cli(["--config", config, "run", "--once", "--no-reboot"], capsys)
    assert code == 2 and "no hawkBit server configured (hawkbit.url)" in one_error(err)

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(REPO / "init.d" / "otad.service")
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()
