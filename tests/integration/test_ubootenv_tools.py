"""otad.boot.ubootenv against the real tools: mkenvimage (u-boot-tools) and libubootenv's fw_* tools.

Byte-identical images with mkenvimage; files written by otad read by fw_printenv and files written
by fw_setenv read by otad; alternating writers on a redundant pair; the shared flock.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otad.boot.envimage import build_image, parse_image
from otad.boot.fwenvconfig import load_fw_env_config
from otad.boot.ubootenv import DEFAULT_LOCK_PATH, UBootEnv
from otad.errors import EnvCorrupt, EnvError

pytestmark = pytest.mark.oracle

SIZE = 0x4000
VECTOR = {"bootcount": "0", "bootlimit": "3", "rootpart": "2", "upgrade_available": "0"}
MKENVIMAGE = shutil.which("mkenvimage")
FW_PRINTENV = shutil.which("fw_printenv")
FW_SETENV = shutil.which("fw_setenv")
STRACE = shutil.which("strace")


def _libubootenv_version() -> Optional[str]:
    """libubootenv's fw_printenv prints a bare version for -V; U-Boot's tools/env does not."""
    if FW_PRINTENV is None or FW_SETENV is None:
        return None
    try:
        out = subprocess.run([FW_PRINTENV, "-V"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out if re.fullmatch(r"\d+\.\d+(\.\d+)?", out) else None


LIBUBOOTENV = _libubootenv_version()
# libubootenv 0.3.2 silently runs without a lock when it cannot create its lock file.
LOCK_DIR_WRITABLE = os.access(os.path.dirname(DEFAULT_LOCK_PATH), os.W_OK)

needs_mkenvimage = pytest.mark.skipif(
    MKENVIMAGE is None, reason="mkenvimage not installed (Debian package u-boot-tools)"
)
needs_libubootenv = pytest.mark.skipif(
    LIBUBOOTENV is None,
    reason="fw_printenv/fw_setenv from libubootenv not installed (Debian package libubootenv-tool); "
    "U-Boot's own tools/env build is not packaged in Debian and is not compared here",
)
needs_lock_dir = pytest.mark.skipif(
    not LOCK_DIR_WRITABLE, reason=f"{os.path.dirname(DEFAULT_LOCK_PATH)} is not writable, the fw tools run unlocked"
)


# ----------------------------------------------------------------------------- helpers


def mkenvimage(lines: str, *args: str) -> bytes:
    assert MKENVIMAGE is not None
    result = subprocess.run([MKENVIMAGE, *args, "-o", "-", "-"], input=lines.encode(), capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def env_lines(variables: Mapping[str, str]) -> str:
    return "".join(f"{k}={variables[k]}\n" for k in sorted(variables, key=lambda k: k.encode()))


def fw_printenv(config: Path) -> Dict[str, str]:
    assert FW_PRINTENV is not None
    result = subprocess.run([FW_PRINTENV, "-c", str(config)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"fw_printenv rc={result.returncode}: {result.stderr}"
    variables: Dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        variables[name] = value
    return variables


def fw_printenv_rc(config: Path) -> int:
    assert FW_PRINTENV is not None
    return subprocess.run([FW_PRINTENV, "-c", str(config)], capture_output=True, timeout=10).returncode


def fw_setenv(config: Path, *args: str) -> None:
    assert FW_SETENV is not None
    result = subprocess.run([FW_SETENV, "-c", str(config), *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"fw_setenv rc={result.returncode}: {result.stderr}"


def lock_path(tmp_path: Path) -> str:
    return DEFAULT_LOCK_PATH if LOCK_DIR_WRITABLE else str(tmp_path / "fw_printenv.lock")


def write_config(tmp_path: Path, lines: Sequence[Tuple[Path, int]]) -> Path:
    config = tmp_path / "fw_env.config"
    config.write_text("".join(f"{path} {offset:#x} 0x4000\n" for path, offset in lines))
    return config


def single_env(tmp_path: Path, variables: Mapping[str, str]) -> Tuple[UBootEnv, Path, Path]:
    path = tmp_path / "uboot.env"
    path.write_bytes(mkenvimage(env_lines(variables), "-s", "0x4000", "-p", "0"))
    config = write_config(tmp_path, [(path, 0)])
    return UBootEnv(load_fw_env_config(str(config)), lock_path=lock_path(tmp_path)), config, path


def redundant_env(tmp_path: Path, variables: Mapping[str, str]) -> Tuple[UBootEnv, Path, Path, Path]:
    image = mkenvimage(env_lines(variables), "-s", "0x4000", "-r", "-p", "0")
    path0, path1 = tmp_path / "uboot.env", tmp_path / "uboot-redund.env"
    path0.write_bytes(image)
    path1.write_bytes(image)
    config = write_config(tmp_path, [(path0, 0), (path1, 0)])
    return UBootEnv(load_fw_env_config(str(config)), lock_path=lock_path(tmp_path)), config, path0, path1


# mkenvimage input is lines: no newline, NUL or backslash in values (it turns "\\\n" into a
# newline), no '#' or blank-only start of a line, no '=' in names.
names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="=#\\"),
    min_size=1,
    max_size=24,
).filter(lambda n: n != ".flags")  # libubootenv hides .flags and enforces its access attributes
values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\\\u2028\u2029\x85"),
    min_size=1,
    max_size=60,
)
variable_sets = st.dictionaries(names, values, min_size=1, max_size=25)


# ------------------------------------------------------------------- mkenvimage


@needs_mkenvimage
def test_mkenvimage_reproduces_the_notes_vectors_and_our_images() -> None:
    lines = env_lines(VECTOR)
    cases = [(("-p", "0"), {}, 0xC3C525C3), (("-r", "-p", "0"), {"redundant": True}, 0xC6C112DB), ((), {"pad": 0xFF}, 0x97F92536)]
    for args, kwargs, crc in cases:
        theirs = mkenvimage(lines, "-s", "0x4000", *args)
        assert theirs == build_image(VECTOR, SIZE, **kwargs)  # type: ignore[arg-type]
        assert int.from_bytes(theirs[:4], "little") == crc


@needs_mkenvimage
@settings(max_examples=40, deadline=None)
@given(variables=variable_sets, redundant=st.booleans(), pad=st.sampled_from([0x00, 0xFF]))
def test_build_image_is_byte_identical_to_mkenvimage_of_sorted_lines(
    variables: Dict[str, str], redundant: bool, pad: int
) -> None:
    args = ["-s", "0x4000", "-p", str(pad)] + (["-r"] if redundant else [])
    assert build_image(variables, SIZE, redundant=redundant, pad=pad) == mkenvimage(env_lines(variables), *args)


@needs_mkenvimage
@pytest.mark.parametrize("redundant", [False, True])
def test_build_image_and_mkenvimage_agree_on_the_largest_env_that_fits(redundant: bool) -> None:
    room = SIZE - (5 if redundant else 4)
    fits = {"a": "x" * (room - 4)}  # "a=" + value + "\0" + final "\0"
    args = ["-s", "0x4000", "-p", "0"] + (["-r"] if redundant else [])
    assert build_image(fits, SIZE, redundant=redundant) == mkenvimage(env_lines(fits), *args)
    too_big = {"a": "x" * (room - 3)}
    with pytest.raises(EnvError, match="too large"):
        build_image(too_big, SIZE, redundant=redundant)
    assert MKENVIMAGE is not None
    result = subprocess.run(
        [MKENVIMAGE, *args, "-o", "-", "-"], input=env_lines(too_big).encode(), capture_output=True, timeout=10
    )
    assert result.returncode != 0 and b"too large" in result.stderr


# ------------------------------------------------------------- fw_printenv / fw_setenv


@needs_libubootenv
@needs_mkenvimage
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=variable_sets, changes=st.dictionaries(names, st.one_of(st.none(), values), max_size=6))
@pytest.mark.parametrize("redundant", [False, True])
def test_fw_printenv_reads_what_otad_writes(
    tmp_path_factory: pytest.TempPathFactory, redundant: bool, base: Dict[str, str], changes: Dict[str, Optional[str]]
) -> None:
    tmp_path = tmp_path_factory.mktemp("env")
    env, config = (redundant_env(tmp_path, base)[:2] if redundant else single_env(tmp_path, base)[:2])
    snapshot = env.update(changes)
    expected = {k: v for k, v in {**base, **changes}.items() if v is not None}
    assert dict(snapshot.variables) == expected
    assert fw_printenv(config) == expected


@needs_libubootenv
@needs_mkenvimage
def test_fw_printenv_reads_a_single_copy_otad_wrote_at_an_offset_of_a_larger_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    head, tail = os.urandom(0x10000), os.urandom(0x3000)
    path.write_bytes(head + mkenvimage(env_lines(VECTOR), "-s", "0x4000", "-p", "0") + tail)
    config = write_config(tmp_path, [(path, 0x10000)])
    env = UBootEnv(load_fw_env_config(str(config)), lock_path=lock_path(tmp_path))
    env.update({"rootpart": "3", "upgrade_available": "1"})
    assert fw_printenv(config) == dict(VECTOR, rootpart="3", upgrade_available="1")
    data = path.read_bytes()
    assert data[:0x10000] == head and data[0x10000 + SIZE:] == tail


@needs_libubootenv
@needs_mkenvimage
@pytest.mark.parametrize("redundant", [False, True])
def test_otad_reads_what_fw_setenv_writes_over_several_writes(tmp_path: Path, redundant: bool) -> None:
    if redundant:
        env, config, path0, path1 = redundant_env(tmp_path, VECTOR)
    else:
        env, config, path0 = single_env(tmp_path, VECTOR)
    history: List[Tuple[int, Optional[int]]] = []
    steps: List[Tuple[str, ...]] = [
        ("rootpart", "3"),
        ("upgrade_available", "1"),
        ("bootcount", "1"),
        ("otad_prev", "2"),
        ("otad_prev",),  # fw_setenv NAME without a value deletes
        ("bootcmd", "run distro_bootcmd; echo a=b"),
    ]
    for args in steps:
        fw_setenv(config, *args)
        snapshot = env.read()
        assert dict(snapshot.variables) == fw_printenv(config)
        history.append((snapshot.active_copy, snapshot.flags))
    assert "otad_prev" not in env.read().variables
    if redundant:
        # mkenvimage -r writes flags 1 into both; the tie picks copy 0, so fw_setenv starts on copy 1
        assert history == [(1, 2), (0, 3), (1, 4), (0, 5), (1, 6), (0, 7)]
    else:
        assert history == [(0, None)] * len(steps)


@needs_libubootenv
@needs_mkenvimage
def test_fw_setenv_empty_value_is_stored_as_name_equals_and_otad_keeps_it(tmp_path: Path) -> None:
    env, config, _ = single_env(tmp_path, VECTOR)
    fw_setenv(config, "empty", "")
    assert env.read().variables["empty"] == ""  # libubootenv 0.3.2 stores "empty=" (U-Boot drops it)
    env.update({"bootcount": "1"})
    assert fw_printenv(config)["empty"] == ""


@needs_libubootenv
@needs_mkenvimage
@pytest.mark.parametrize("start_flags", [1, 250])
def test_alternating_writes_by_otad_and_fw_setenv_on_a_redundant_pair(tmp_path: Path, start_flags: int) -> None:
    env, config, path0, path1 = redundant_env(tmp_path, VECTOR)
    for path in (path0, path1):
        path.write_bytes(build_image(VECTOR, SIZE, redundant=True, flags=start_flags))
    expected = dict(VECTOR)
    flags = start_flags
    for step in range(12):
        before = env.read()
        untouched = (path0, path1)[before.active_copy].read_bytes()
        value = str(step)
        if step % 2 == 0:
            env.update({"bootcount": value, f"otad{step}": "x"})
            expected.update({"bootcount": value, f"otad{step}": "x"})
        else:
            fw_setenv(config, "bootcount", value)
            expected["bootcount"] = value
        flags = (flags + 1) & 0xFF
        after = env.read()
        assert after.active_copy == 1 - before.active_copy
        assert after.flags == flags
        assert (path0, path1)[before.active_copy].read_bytes() == untouched
        assert dict(after.variables) == expected == fw_printenv(config)


@needs_libubootenv
@needs_mkenvimage
@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],
        lambda b: b[:-1],
        lambda b: b"\xff" * len(b),
    ],
    ids=["bad-crc", "truncated", "erased"],
)
def test_fw_printenv_and_otad_agree_that_a_damaged_env_is_invalid(tmp_path: Path, damage: object) -> None:
    env, config, path = single_env(tmp_path, VECTOR)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    before = path.read_bytes()
    assert fw_printenv_rc(config) != 0  # libubootenv 0.3.2: 243 without a default env file
    with pytest.raises(EnvCorrupt):
        env.read()
    with pytest.raises(EnvCorrupt):
        env.update({"rootpart": "3"})
    assert path.read_bytes() == before


@needs_libubootenv
@needs_mkenvimage
def test_otad_reads_a_redundant_pair_after_fw_setenv_wrapped_the_flags(tmp_path: Path) -> None:
    env, config, path0, path1 = redundant_env(tmp_path, VECTOR)
    path0.write_bytes(build_image(VECTOR, SIZE, redundant=True, flags=255))
    path1.write_bytes(build_image(VECTOR, SIZE, redundant=True, flags=254))
    fw_setenv(config, "bootcount", "1")  # copy 1 gets (255 + 1) & 0xff = 0, which wins over 255
    snapshot = env.read()
    assert (snapshot.active_copy, snapshot.flags, snapshot.variables["bootcount"]) == (1, 0, "1")
    assert parse_image(path1.read_bytes(), SIZE, redundant=True) == dict(VECTOR, bootcount="1")


# --------------------------------------------------------------------- the lock


@needs_libubootenv
@needs_mkenvimage
@needs_lock_dir
def test_fw_setenv_waits_for_the_lock_otad_takes(tmp_path: Path) -> None:
    env, config, path = single_env(tmp_path, VECTOR)
    assert env.lock_path == DEFAULT_LOCK_PATH
    assert FW_SETENV is not None
    fd = os.open(DEFAULT_LOCK_PATH, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = subprocess.Popen([FW_SETENV, "-c", str(config), "bootcount", "7"])
        try:
            time.sleep(0.5)
            assert proc.poll() is None, "fw_setenv did not wait for /var/lock/fw_printenv.lock"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        assert proc.wait(timeout=10) == 0
    finally:
        os.close(fd)
    assert env.read().variables["bootcount"] == "7"


@needs_libubootenv
@needs_mkenvimage
@needs_lock_dir
@pytest.mark.skipif(STRACE is None, reason="strace not installed")
def test_fw_setenv_flocks_the_default_lock_path(tmp_path: Path) -> None:
    _, config, _ = single_env(tmp_path, VECTOR)
    assert STRACE is not None and FW_SETENV is not None
    result = subprocess.run(
        [STRACE, "-f", "-e", "trace=open,openat,flock", FW_SETENV, "-c", str(config), "bootcount", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0 and "PTRACE" in result.stderr.upper():
        pytest.skip(f"strace cannot trace here: {result.stderr.strip()[:200]}")
    match = re.search(r'open(?:at)?\(.*"' + re.escape(DEFAULT_LOCK_PATH) + r'", ([^)]*)\) = (\d+)', result.stderr)
    assert match, result.stderr
    assert "O_CREAT" in match.group(1)
    assert re.search(r"flock\(" + match.group(2) + r", LOCK_EX\)\s*= 0", result.stderr), result.stderr
