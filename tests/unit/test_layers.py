"""The layer rule (docs/architecture.md, "Package layout"), checked by what an import loads in a
fresh interpreter: config.py is a leaf, boot/ loads nothing of install/ or hawkbit/, and what
turns the config into an install request loads no boot or hawkBit code."""

from __future__ import annotations

import subprocess
import sys
from typing import List, Tuple

import pytest


def loaded_by(*modules: str) -> Tuple[List[str], List[str]]:
    """(what was imported, every otad module then loaded), in a new process; a name ending in
    ".*" stands for every module of that package."""
    code = ("import importlib, pkgutil, sys\n"
            "asked = []\n"
            f"for name in {modules!r}:\n"
            "    if name.endswith('.*'):\n"
            "        package = importlib.import_module(name[:-2])\n"
            "        asked += [f'{package.__name__}.{m.name}' for m in pkgutil.iter_modules(package.__path__)]\n"
            "    else:\n"
            "        asked.append(name)\n"
            "for name in asked:\n"
            "    importlib.import_module(name)\n"
            "print(' '.join(asked))\n"
            "print(' '.join(sorted(m for m in sys.modules if m == 'otad' or m.startswith('otad.'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    asked, loaded = done.stdout.splitlines()
    return asked.split(), loaded.split()


def test_config_is_a_leaf() -> None:
    _, loaded = loaded_by("otad.config")
    assert set(loaded) <= {"otad", "otad.config", "otad.errors"}


@pytest.mark.parametrize("modules, forbidden", [
    (("otad.install.options",), ("otad.boot", "otad.hawkbit")),
    (("otad.boot.*",), ("otad.install", "otad.hawkbit", "otad.update")),
    # delta/ sits beside swu/: zchunk data, sources, Range requests through a given opener
    (("otad.delta.*",), ("otad.swu", "otad.install", "otad.boot", "otad.hawkbit", "otad.update")),
    # the installer gets chunk sources through install/chunks.py, filled by update.py or the daemon
    (("otad.install.*", "otad.install.handlers.*"), ("otad.boot", "otad.hawkbit", "otad.update")),
])
def test_a_layer_loads_nothing_above_it(modules: Tuple[str, ...], forbidden: Tuple[str, ...]) -> None:
    asked, loaded = loaded_by(*modules)
    assert asked and set(asked) <= set(loaded)
    assert [m for m in loaded if m in forbidden or m.startswith(tuple(f + "." for f in forbidden))] == []
