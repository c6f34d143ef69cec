"""POSIX extended regular expressions (glibc regcomp, REG_EXTENDED) as Python `re` patterns.

SWUpdate matches a hardware-compatibility element written `#RE:<regex>` with regexec(); this
module translates such a regex so that Python matches what glibc would, and nothing else: it
knows no sw-description (the Manifest in otad.swu.models asks it).
"""

from __future__ import annotations

import functools
import logging
import re
import string
from typing import List, Optional, Tuple

log = logging.getLogger(__name__)


# POSIX bracket-expression classes, as Python character-class bodies.
_POSIX_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "0-9A-Za-z", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "punct": re.escape(string.punctuation),
    "print": "\\x20-\\x7e", "graph": "\\x21-\\x7e", "cntrl": "\\x00-\\x1f\\x7f", "xdigit": "0-9A-Fa-f",
}
_RE_DUP_MAX = 0x7FFF  # glibc's limit for a {m,n} count
# Escapes that glibc's regcomp() gives a meaning in an ERE; any other `\c` is the character c.
_ERE_ESCAPES = {"w": r"\w", "W": r"\W", "s": r"\s", "S": r"\S", "b": r"\b", "B": r"\B",
                "<": r"\b", ">": r"\b", "`": r"\A", "'": r"\Z"}


@functools.lru_cache(maxsize=64)
def compile_ere(pattern: str) -> "Optional[re.Pattern[str]]":
    """A POSIX extended regex (glibc regcomp, REG_EXTENDED) as a Python regex; None if invalid."""
    try:
        return re.compile(_ere_to_python(pattern), re.DOTALL)
    except (ValueError, KeyError, OverflowError, RecursionError, re.error):
        log.warning("hardware-compatibility: %r is not a valid POSIX extended regex; it matches nothing",
                    pattern)
        return None


def _ere_to_python(pattern: str) -> str:
    out: List[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 == len(pattern):
                raise ValueError("trailing backslash")
            d = pattern[i + 1]
            out.append(_ERE_ESCAPES.get(d) or (f"\\{d}" if d in "123456789" else re.escape(d)))
            i += 2
        elif c == "[":
            body, i = _ere_bracket(pattern, i + 1)
            out.append(body)
        elif c == "(" and pattern.startswith("(?", i):
            raise ValueError("'(?' has no meaning in a POSIX regex")
        elif c == "{" and any(int(n) > _RE_DUP_MAX for n in re.findall(r"[0-9]+", _interval(pattern, i))):
            raise ValueError("repetition count above RE_DUP_MAX")
        else:
            out.append(r"\Z" if c == "$" else c)  # POSIX `$` never matches before a final newline
            i += 1
    return "".join(out)


def _interval(pattern: str, i: int) -> str:
    m = re.match(r"\{[0-9]*(?:,[0-9]*)?\}", pattern[i:])
    return m.group() if m else ""


def _ere_bracket(pattern: str, i: int) -> Tuple[str, int]:
    """The bracket expression starting after `[` at `i`: a backslash is literal inside it, `]`
    first is literal, `[:class:]` names a class. Returns the Python class and the next index."""
    parts = ["[^" if pattern.startswith("^", i) else "["]
    i += 1 if pattern.startswith("^", i) else 0
    start = i
    while True:
        if i >= len(pattern):
            raise ValueError("unterminated bracket expression")
        c = pattern[i]
        if c == "]" and i > start:
            return "".join(parts) + "]", i + 1
        if c == "[" and pattern[i + 1:i + 2] in (":", "=", "."):
            delimiter = pattern[i + 1]
            end = pattern.find(delimiter + "]", i + 2)
            if end < 0:
                raise ValueError("unterminated [: :] in a bracket expression")
            name = pattern[i + 2:end]
            parts.append(_POSIX_CLASSES[name] if delimiter == ":" else re.escape(name))
            i = end + 2
        else:
            parts.append("-" if c == "-" else re.escape(c))
            i += 1
