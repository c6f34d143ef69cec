"""Version comparison exactly as SWUpdate 2022.12's compare_versions() does it.

Used for -N / --max-version and `install-if-higher`. Digits and dots: up to four 16-bit fields
compared as one number; else semantic versions (SWUpdate's bundled semver.c, quirks included);
else plain byte-wise string comparison. `-R` is a literal string equality, not this.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

__all__ = ["compare"]

_SEMVER_CHARS = re.compile(r"[0-9A-Za-z.+-]{0,255}")
_LEADING_INT = re.compile(r"[ \t\n\r\f\v]*[-+]?[0-9]+")
_INT_MAX = 2**31 - 1


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is lower than, equal to or higher than `b`."""
    left, right = _old_style(a), _old_style(b)
    if left is not None and right is not None:
        return _sign(left - right)
    left_semver, right_semver = _semver(a), _semver(b)
    if left_semver is not None and right_semver is not None:
        return _semver_compare(left_semver, right_semver)
    return _sign((a.encode() > b.encode()) - (a.encode() < b.encode()))


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _old_style(version: str) -> Optional[int]:
    """`major.minor.revision.build` as a 64-bit number: fields of 0..65535, missing ones 0,
    fields past the fourth ignored, empty fields skipped (strtok). None if not of that form."""
    if not re.fullmatch(r"[0-9.]*", version):
        return None
    fields = [field for field in version.split(".") if field][:4]
    if any(len(field.lstrip("0")) > 5 or int(field) > 0xFFFF for field in fields):
        return None  # SWUpdate falls back to semver for a field above 65535
    number = 0
    for field in fields + ["0"] * (4 - len(fields)):
        number = (number << 16) | int(field)
    return number


_Semver = Tuple[int, int, int, Optional[str]]


def _semver(version: str) -> Optional[_Semver]:
    """semver.c's semver_parse(): (major, minor, patch, prerelease); build metadata is dropped."""
    if not _SEMVER_CHARS.fullmatch(version):
        return None
    core, _, _metadata = version.partition("+")
    core, dash, prerelease = core.partition("-")
    numbers: List[int] = []
    for piece in core.split(".")[:4]:
        if len(piece) > 256:
            return None
        if piece and not piece.isdigit():
            return None  # strtol() must consume the whole slice
        numbers.append(_strtol(piece))
    numbers += [0] * (3 - len(numbers))
    return numbers[0], numbers[1], numbers[2], prerelease if dash else None


def _strtol(text: str) -> int:
    """C's strtol(text, &end, 10) as an int: 0 without digits, clamped, then cut to C int."""
    m = _LEADING_INT.match(text)
    value = min(int(m.group()), 2**63 - 1) if m and len(m.group()) < 40 else (2**63 - 1 if m else 0)
    return (value + 2**31) % 2**32 - 2**31  # semver.c stores it in an int


def _semver_compare(x: _Semver, y: _Semver) -> int:
    for a, b in zip(x[:3], y[:3]):
        if a != b:
            return 1 if a > b else -1
    return _compare_prerelease(x[3], y[3])


def _compare_prerelease(x: Optional[str], y: Optional[str]) -> int:
    """semver.c's compare_prerelease(): dot-separated identifiers, numeric below alphanumeric;
    a version without prerelease ranks above one with it."""
    if x is None or y is None:
        return 0 if x is y else -1 if y is None else 1
    xs, ys = x.split("."), y.split(".")
    for xi, yi in zip(xs, ys):
        x_num, y_num = _numeric(xi), _numeric(yi)
        if (x_num is None) != (y_num is None):
            return -1 if x_num is not None else 1
        if x_num is not None and y_num is not None:
            if x_num != y_num:
                return -1 if x_num < y_num else 1
        elif xi != yi:
            # strncmp over the shorter length, then the shorter one is lower
            common = min(len(xi), len(yi))
            if xi[:common] != yi[:common]:
                return -1 if xi.encode()[:common] < yi.encode()[:common] else 1
            return -1 if len(xi) < len(yi) else 1
    return _sign(len(xs) - len(ys)) if len(xs) != len(ys) else 0


def _numeric(identifier: str) -> Optional[int]:
    """strtol() consumed the whole identifier (an empty one counts as the number 0)."""
    m = _LEADING_INT.fullmatch(identifier)
    if identifier == "":
        return 0
    return _strtol(identifier) if m else None
