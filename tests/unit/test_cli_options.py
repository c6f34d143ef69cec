"""Global options (`--config`, `--debug`, `-v`, `-q`) are taken after the sub-command too.

`otad install x.swu --config c.conf` is how a SWUpdate user types it; before, argparse refused it
("unrecognized arguments"), and after `env set` the word `--config` was silently read as an
abbreviation of `--config-env`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from otad.cli import build_parser
from tests.conftest import run_cli
from tests.unit.test_update_ab import AbDevice, ab_bundle

REPO = Path(__file__).resolve().parents[2]

COMMANDS = {
    "install": ["install", "x.swu"],
    "info": ["info", "x.swu"],
    "env print": ["env", "print"],
    "env set": ["env", "set", "rootpart", "3"],
    "status": ["status", "--json"],
    "confirm": ["confirm"],
    "mark-good": ["mark-good"],
    "mark-bad": ["mark-bad", "a"],
    "run": ["run", "--once"],
}


@pytest.fixture
def ab(tmp_path, pki) -> AbDevice:
    return AbDevice(tmp_path / "ab", pki)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_global_options_after_the_sub_command(command: str) -> None:
    args = build_parser().parse_args([*COMMANDS[command], "--config", "c.conf", "--debug", "-v", "-v", "-q"])
    assert (args.config, args.debug, args.verbose, args.quiet) == ("c.conf", True, 2, True)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_global_options_before_the_sub_command_keep_their_values(command: str) -> None:
    args = build_parser().parse_args(["--config", "c.conf", "--debug", "-v", "-q", *COMMANDS[command]])
    assert (args.config, args.debug, args.verbose, args.quiet) == ("c.conf", True, 1, True)
    args = build_parser().parse_args(COMMANDS[command])
    assert (args.config, args.debug, args.verbose, args.quiet) == (None, False, 0, False)


def test_after_mkswu_config_stays_swugenerators_variables_file() -> None:
    args = build_parser().parse_args(["mkswu", "-s", "t", "-o", "o.swu", "--config", "vars.cfg", "--debug"])
    assert (args.variables_file, args.config, args.debug) == ("vars.cfg", None, True)


def test_install_with_config_after_the_bundle(tmp_path, pki, ab, capsys) -> None:
    rc, out, err = run_cli(["install", ab_bundle(tmp_path, pki), "--config", ab.config, "-q"], capsys)
    assert rc == 0, err
    assert "into slot b" in out and ab.env()["rootpart"] == "3"
    assert "INFO" not in err  # -q after the sub-command counts too


def test_status_json_with_config_after(ab, capsys) -> None:
    rc, out, err = run_cli(["status", "--json", "--config", ab.config], capsys)
    assert rc == 0, err
    assert json.loads(out)["booted"] == "a"


def test_env_set_and_print_with_config_after_use_its_fw_env_config(ab, capsys) -> None:
    rc, _, err = run_cli(["env", "set", "--config", ab.config, "note", "hello world"], capsys)
    assert rc == 0, err
    assert ab.env()["note"] == "hello world"
    rc, out, err = run_cli(["env", "print", "note", "--config", ab.config], capsys)
    assert (rc, out) == (0, "note=hello world\n"), err


def test_debug_after_the_sub_command_prints_the_traceback(tmp_path, capsys) -> None:
    rc, _, err = run_cli(["info", tmp_path / "nope.swu", "--debug"], capsys)
    assert rc == 1 and "Traceback" in err and "cannot open bundle" in err


def test_parsing_global_options_after_a_command_imports_nothing_heavy() -> None:
    """cli.py's lazy imports keep `otad --help` fast on a Pi Zero; the new options must not undo that."""
    code = ("import sys, otad.cli as c; c.build_parser().parse_args(['install', 'x.swu', '--config', 'c', '-v']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'zstandard', 'asn1crypto', "
            "'requests') or m in ('otad.update', 'otad.mkswu', 'otad.config', 'otad.swu.bundle')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def _every_parser(parser):
    """The top-level parser and each sub-command's, their arguments added (as when parsed)."""
    yield parser
    for action in parser._actions:
        for sub in getattr(action, "_name_parser_map", {}).values():
            sub.complete()
            yield from _every_parser(sub)


@pytest.mark.parametrize("width", [30, 52, 80, 200])
def test_help_is_argparses_own_text_at_any_width(width: int, monkeypatch) -> None:
    """cli's formatter skips textwrap for lines that fit; the text must not change by a byte."""
    import argparse

    monkeypatch.setenv("COLUMNS", str(width))
    parsers = list(_every_parser(build_parser()))
    assert len(parsers) > 12
    for p in parsers:
        ours = p.format_help()
        p.formatter_class = argparse.HelpFormatter
        assert ours == p.format_help(), p.prog
