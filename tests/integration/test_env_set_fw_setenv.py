"""`otad env set` against Debian's fw_setenv (libubootenv 0.3.2), argument vector by argument vector.

Each vector is applied by fw_setenv to one copy of an env and by `otad env set` to another copy of
the same env (single and redundant layouts); `fw_printenv` must then print the same bytes for
both. Where otad refuses, its env must be byte-for-byte untouched, its error one line, and the
reason must hold for fw_setenv too: it exits non-zero, complains on stderr (and does something
else than asked), or leaves the variables as they were. The few inputs that fw_setenv accepts and
otad refuses on purpose are listed as STRICTER with the reason, and checked to still be accepted
by fw_setenv, so the list cannot go stale.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from otad.cli import main

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(shutil.which("fw_setenv") is None or shutil.which("mkenvimage") is None,
                       reason="needs fw_setenv/fw_printenv (libubootenv-tool) and mkenvimage (u-boot-tools)"),
]

SIZE = 0x4000
BASE_LINES = [
    "bootargs=console=serial0,115200 root=/dev/mmcblk0p2 rootwait",
    "bootcmd=run mmcboot",
    "bootcount=0",
    "bootlimit=3",
    "empty=",
    "note=a=b c",
    "rootpart=2",
    "upgrade_available=0",
    "größe=ü",
]
FLAGS_LINES = BASE_LINES + [".flags=rootpart:sr,bootcount:sr"]
DECIMAL_LINES = BASE_LINES + [".flags=bootcount:dw"]


def _room_left(lines: Sequence[str], redundant: bool) -> int:
    """Bytes a new `big=<value>` may take in the value so the env still fits exactly."""
    body = sum(len(line.encode()) + 1 for line in lines) + 1
    return SIZE - (5 if redundant else 4) - body - len(b"big=") - 1


@dataclass(frozen=True)
class Vector:
    """One `fw_setenv ARGS`. `otad_args`: what otad gets instead (its NAME=VALUE form)."""

    args: Tuple[str, ...]
    refused: Optional[str] = None  # None: both must agree; else why otad refuses (see module doc)
    otad_args: Optional[Tuple[str, ...]] = None
    base: Tuple[str, ...] = tuple(BASE_LINES)


def v(*args: str, **kw: object) -> Vector:
    return Vector(tuple(args), **kw)  # type: ignore[arg-type]


# Marked `big` values are sized at run time from the layout: "FIT" fills the env exactly,
# "FIT+1" and "FIT+2" are one and two bytes too many.
AGREE: Dict[str, Vector] = {
    "one pair": v("rootpart", "3"),
    "two pairs": v("rootpart", "3", "upgrade_available", "1"),
    "arm a trial": v("rootpart", "3", "upgrade_available", "1", "bootcount", "0", "otad_prev", "2"),
    "five pairs": v("a", "1", "b", "2", "c", "3", "d", "4", "e", "5"),
    "odd count deletes the last": v("rootpart", "3", "bootcount"),
    "delete one": v("rootpart"),
    "delete a missing name": v("nosuch"),
    "empty value kept": v("bootcount", ""),
    "new empty value": v("fresh", ""),
    "empty and delete": v("bootcount", "", "upgrade_available"),
    "spaces in one value": v("note", "run a; run b  now"),
    "leading and trailing blanks": v("note", "  padded  "),
    "= inside a value": v("note", "a=b"),
    "only = signs": v("note", "=="),
    "pairs inside a value": v("note", "x=1 y=2"),
    "double quotes": v("note", '"quoted"'),
    "single quotes": v("note", "'single'"),
    "apostrophe": v("note", "it's"),
    "unicode value": v("note", "grüße ✓ 🚀"),
    "unicode name": v("größe", "ä"),
    "new unicode name": v("naïve", "1"),
    "tab in a value": v("note", "a\tb"),
    "newline in a value": v("note", "line1\nline2"),
    "control byte in a value": v("note", "a\x01b"),
    "bytes that are not UTF-8": v("note", b"\xff\xfe".decode("utf-8", "surrogateescape")),
    "same name twice, last wins": v("a", "1", "a", "2"),
    "set then delete": v("a", "1", "a"),
    "delete then set": v("rootpart", "", "rootpart", "3"),
    "unchanged value": v("rootpart", "2"),
    "case matters": v("Rootpart", "9"),
    "dots, dashes, underscores": v("otad.slot", "b", "my-var", "1", "_x", "2"),
    "# inside a name": v("serial#", "x"),
    "U-Boot expansions stay text": v("bootcmd", "run ${boot_targets}; setenv x $(y)"),
    "a U-Boot script": v("altbootcmd", 'if test "${rootpart}" = "2"; then setenv rootpart 3; fi; saveenv'),
    "printf directives": v("note", "%s%n%x"),
    "a lone dash": v("note", "-"),
    "dash values after --": v("--", "rootpart", "-1", "note", "-v x", "minus", "--"),
    "kernel command line": v("bootargs", "console=serial0,115200 console=tty1 root=PARTUUID=1234-03 rootwait quiet"),
    "twenty pairs": v(*[w for i in range(20) for w in (f"var{i:02d}", f"value {i}")]),
    "4000-byte value": v("big", "x" * 4000),
    "value that fills the env exactly": v("big", "FIT"),
    "otad form, two assignments": v("a", "1", "b", "2", otad_args=("a=1", "b=2")),
    "otad form, NAME= deletes": v("rootpart", otad_args=("rootpart=",)),
    "otad form, = inside the value": v("note", "k=v", otad_args=("note=k=v",)),
    "otad form, set and delete": v("rootpart", "3", "bootcount", otad_args=("rootpart=3", "bootcount=")),
    "decimal-typed variable deleted": v("bootcount", base=tuple(DECIMAL_LINES)),
    "only the first .flags entry counts": v("bootcount", "7", base=tuple(BASE_LINES + [".flags=a:sr,bootcount:sr"])),
}

REFUSED: Dict[str, Vector] = {
    # fw_setenv exits non-zero
    "= in a NAME (a mix)": v("a=1", "b", refused="rc"),
    "= in the last NAME": v("rootpart", "3", "bootcount=0", refused="rc"),
    "empty name with =": v("rootpart", "3", "=x", "1", refused="rc"),
    "two bytes too large": v("big", "FIT+2", refused="rc"),
    "far too large": v("big", "x" * SIZE, refused="rc"),
    # fw_setenv's getopt complains, drops the word and exits 0 (deleting the variable before it)
    "negative number value": v("rootpart", "-1", refused="stderr"),
    "value that looks like options": v("bootargs", "-v quiet", refused="stderr"),
    "unknown long option": v("rootpart", "--foo", refused="stderr"),
    # fw_setenv exits 0 and keeps the variable: .flags
    "read-only in .flags": v("rootpart", "3", refused="unchanged", base=tuple(FLAGS_LINES)),
    "read-only deleted": v("rootpart", refused="unchanged", base=tuple(FLAGS_LINES)),
    "decimal-typed in .flags": v("bootcount", "5", refused="unchanged", base=tuple(DECIMAL_LINES)),
    # fw_setenv accepts; otad refuses on purpose (U-Boot would read the result differently)
    "empty name": v("", "x", refused="stricter"),
    "name starting with #": v("#x", "y", refused="stricter"),
    "blank in a name": v("a b", "x", refused="stricter"),
    "backslash in a value": v("note", "a\\b", refused="stricter"),
    ".flags as a name": v(".flags", "rootpart:sr", refused="stricter"),
    # libubootenv stores one byte more than fits: the last entry's NUL ends the copy, and the
    # list's final NUL goes past it (into its heap buffer); mkenvimage and U-Boot's saveenv
    # keep room for that NUL, and so does otad
    "one byte too large": v("big", "FIT+1", refused="stricter"),
}


# ----------------------------------------------------------------------------- helpers


def make_env(directory: Path, lines: Sequence[str], redundant: bool) -> Path:
    """fw_env.config over env files made by mkenvimage from `lines`."""
    directory.mkdir(parents=True)
    text = "".join(f"{line}\n" for line in lines).encode()
    args = ["mkenvimage", "-s", hex(SIZE), "-p", "0", *(["-r"] if redundant else []), "-o", "-", "-"]
    image = subprocess.run(args, input=text, capture_output=True, check=True, timeout=30).stdout
    config = directory / "fw_env.config"
    copies = ["uboot.env", "uboot-redund.env"] if redundant else ["uboot.env"]
    for name in copies:
        (directory / name).write_bytes(image)
    config.write_text("".join(f"{directory / name} 0x0 {hex(SIZE)}\n" for name in copies))
    return config


def env_bytes(config: Path) -> List[bytes]:
    return [p.read_bytes() for p in sorted(config.parent.glob("uboot*.env"))]


def fw(tool: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [tool, "-c", str(config), *(a.encode("utf-8", "surrogateescape") for a in args)]
    return subprocess.run(argv, capture_output=True, timeout=30)


def otad_env_set(config: Path, args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Tuple[int, str]:
    conf = config.parent / "otad.conf"
    conf.write_text(f'bootloader = {{ lock_file = "{config.parent / "fw.lock"}"; }};\n')
    try:
        rc = main(["--config", str(conf), "env", "set", "-c", str(config), *args])
    except SystemExit as exc:  # argparse's own usage errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


def sized(args: Sequence[str], lines: Sequence[str], redundant: bool) -> Tuple[str, ...]:
    fit = "y" * _room_left(lines, redundant)
    return tuple({"FIT": fit, "FIT+1": fit + "y", "FIT+2": fit + "yy"}.get(a, a) for a in args)


def apply_both(tmp_path: Path, vector: Vector, redundant: bool, capsys: pytest.CaptureFixture[str]):
    ours = make_env(tmp_path / "otad", vector.base, redundant)
    theirs = make_env(tmp_path / "fw", vector.base, redundant)
    args = sized(vector.args, vector.base, redundant)
    before = env_bytes(ours)
    fw_result = fw("fw_setenv", theirs, *args)
    rc, err = otad_env_set(ours, sized(vector.otad_args or vector.args, vector.base, redundant), capsys)
    return ours, theirs, before, fw_result, rc, err


LAYOUTS = pytest.mark.parametrize("redundant", [False, True], ids=["single", "redundant"])


# ------------------------------------------------------------------------------- tests


def test_the_vectors_cover_what_the_issue_asks() -> None:
    assert len(AGREE) >= 40
    assert {vec.refused for vec in REFUSED.values()} == {"rc", "stderr", "unchanged", "stricter"}


@LAYOUTS
@pytest.mark.parametrize("name", list(AGREE))
def test_otad_env_set_gives_the_variables_fw_setenv_gives(tmp_path, capsys, name: str, redundant: bool) -> None:
    vector = AGREE[name]
    ours, theirs, _, fw_result, rc, err = apply_both(tmp_path, vector, redundant, capsys)
    assert fw_result.returncode == 0 and fw_result.stderr == b"", fw_result.stderr
    assert rc == 0, err
    printed = fw("fw_printenv", ours)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == fw("fw_printenv", theirs).stdout


@LAYOUTS
@pytest.mark.parametrize("name", list(REFUSED))
def test_otad_refuses_what_fw_setenv_refuses_and_writes_nothing(tmp_path, capsys, name: str,
                                                                redundant: bool) -> None:
    vector = REFUSED[name]
    ours, theirs, before, fw_result, rc, err = apply_both(tmp_path, vector, redundant, capsys)
    assert rc in (1, 2), err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if ": error: " in line]
    assert line.startswith(("otad: error: ", "otad env set: error: ")), err
    assert env_bytes(ours) == before
    base_printed = fw("fw_printenv", ours).stdout
    after_fw = fw("fw_printenv", theirs).stdout
    if vector.refused == "rc":
        assert fw_result.returncode != 0
    elif vector.refused == "stderr":
        assert fw_result.returncode == 0 and fw_result.stderr  # "invalid option": exit 0 anyway
        assert after_fw != base_printed  # and it did something other than asked
    elif vector.refused == "unchanged":
        assert fw_result.returncode == 0 and after_fw == base_printed
    else:  # stricter: fw_setenv still takes it (and writes), otad refuses on purpose
        assert fw_result.returncode == 0 and env_bytes(theirs) != before


def test_a_negative_value_after_dashes_is_what_fw_setenv_stores(tmp_path, capsys) -> None:
    """The advice otad's refusal gives (`--`) is what makes fw_setenv store the value too."""
    ours = make_env(tmp_path / "otad", BASE_LINES, False)
    theirs = make_env(tmp_path / "fw", BASE_LINES, False)
    assert fw("fw_setenv", theirs, "--", "bootdelay", "-1").returncode == 0
    rc, err = otad_env_set(ours, ["--", "bootdelay", "-1"], capsys)
    assert rc == 0, err
    assert b"bootdelay=-1\n" in fw("fw_printenv", ours).stdout == fw("fw_printenv", theirs).stdout


# ------------------------------------------------------------------------- -s SCRIPT

LINE_MAX = "v=" + "s" * 1021  # 1023 bytes: the longest line fw_setenv -s reads whole

SCRIPT_AGREE: Dict[str, str] = {
    "set two": "rootpart=3\nupgrade_available=1\n",
    "comments, blank lines, CRLF": "# switch\n\nrootpart=3\r\n#bootcount=9\nbootcount=1\r\n",
    "empty value deletes": "bootcount=\nnosuch=\n",
    "value as written": 'note=  a "b" c=d  \n',
    "unicode": "größe=ö\nnaïve=✓\n",
    "later line wins": "a=1\na=2\nb=1\nb=\n",
    "no final newline": "rootpart=3",
    "longest line": LINE_MAX + "\n",
    "longest line with CRLF": LINE_MAX + "\r\n",
}

SCRIPT_REFUSED: Dict[str, Tuple[str, str]] = {
    # (script, what fw_setenv does instead)
    "U-Boot tools/env form 'name value'": ("rootpart 3\n", "skips"),
    "name alone": ("rootpart\n", "skips"),
    "a line cut at 1023 bytes": (LINE_MAX + "s\n", "cuts"),
    "backslash": ("note=a\\b\n", "stricter"),
}


@LAYOUTS
@pytest.mark.parametrize("name", list(SCRIPT_AGREE))
def test_otad_env_set_s_gives_the_variables_fw_setenv_s_gives(tmp_path, capsys, name: str, redundant: bool) -> None:
    script = tmp_path / "script"
    script.write_bytes(SCRIPT_AGREE[name].encode())
    ours = make_env(tmp_path / "otad", BASE_LINES, redundant)
    theirs = make_env(tmp_path / "fw", BASE_LINES, redundant)
    fw_result = fw("fw_setenv", theirs, "-s", str(script))
    assert fw_result.returncode == 0 and fw_result.stderr == b""
    rc, err = otad_env_set(ours, ["-s", str(script)], capsys)
    assert rc == 0, err
    assert fw("fw_printenv", ours).stdout == fw("fw_printenv", theirs).stdout


@LAYOUTS
@pytest.mark.parametrize("name", list(SCRIPT_REFUSED))
def test_otad_env_set_s_refuses_lines_fw_setenv_skips_or_cuts(tmp_path, capsys, name: str, redundant: bool) -> None:
    text, instead = SCRIPT_REFUSED[name]
    script = tmp_path / "script"
    script.write_bytes(text.encode())
    ours = make_env(tmp_path / "otad", BASE_LINES, redundant)
    theirs = make_env(tmp_path / "fw", BASE_LINES, redundant)
    before = env_bytes(ours)
    base_printed = fw("fw_printenv", theirs).stdout
    assert fw("fw_setenv", theirs, "-s", str(script)).returncode == 0
    after_fw = fw("fw_printenv", theirs).stdout
    rc, err = otad_env_set(ours, ["-s", str(script)], capsys)
    assert rc == 1 and f"{script}:1: " in err and "Traceback" not in err, err
    assert env_bytes(ours) == before
    if instead == "skips":
        assert after_fw == base_printed
    elif instead == "cuts":
        assert b"\nv=" + b"s" * 1021 + b"\n" in after_fw  # the 1024th byte went missing
    else:
        assert after_fw != base_printed


def test_missing_script_is_an_error_where_fw_setenv_quietly_rewrites_the_env(tmp_path, capsys) -> None:
    ours = make_env(tmp_path / "otad", BASE_LINES, False)
    theirs = make_env(tmp_path / "fw", BASE_LINES, False)
    fw_result = fw("fw_setenv", theirs, "-s", str(tmp_path / "missing"))
    assert fw_result.returncode == 0  # libubootenv 0.3.2 ignores the failed open
    before = env_bytes(ours)
    rc, err = otad_env_set(ours, ["-s", str(tmp_path / "missing")], capsys)
    assert rc == 1 and "cannot read the script" in err
    assert env_bytes(ours) == before
