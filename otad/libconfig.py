"""libconfig text → plain Python values: the one loader for sw-description and otad.conf.

Built on libconf's parser, its tokenizer and a few grammar rules replaced, so that otad reads a
text exactly as libconfig 1.5 (Debian's, linked into SWUpdate) does, or refuses it; it never
reads another file. `Locator` maps a key path of such a text back to file:line for messages.
What the values mean is left to `otad.config` and `otad.swu.manifest`.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type, Union

import libconf  # type: ignore[import-untyped]

from otad.errors import ConfigError, OtadError

__all__ = ["loads", "Locator", "MAX_DEPTH"]

# Groups, lists and arrays nested deeper than this are refused: keeps the parser (and every
# consumer that walks the tree recursively) far from Python's recursion limit.
MAX_DEPTH = 64

# Accepted integer ranges. libconfig 1.5 silently keeps the low 32 bits of a larger integer
# written without L; refusing is the safe reading. From 2**31 up a value is read as written:
# libconfig makes it negative, but SWUpdate reads it back as unsigned (`offset = 0x80000000;`).
_RANGES = {
    "integer": (-(2**31), 2**32 - 1, 32),
    "hex": (0, 2**32 - 1, 32),
    "integer64": (-(2**63), 2**63 - 1, 64),
    "hex64": (0, 2**64 - 1, 64),
}

# The scanner rules of libconfig 1.5 (lib/scanner.l) in flex order. flex takes the longest match
# and, between equally long ones, the earlier rule: so `true` is a boolean but `true-x` a name.
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_RULES: Tuple[Tuple[str, str, "re.Pattern[str]"], ...] = tuple(
    (kind, first, re.compile(rx))
    for kind, first, rx in (  # (token, the characters it can start with, regex)
        ("=", "=:", r"[=:]"),
        (",", ",", r","),
        ("{", "{", r"\{"),
        ("}", "}", r"\}"),
        ("boolean", "TtFf", r"[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]"),
        ("name", _LETTERS + "*", r"[A-Za-z*][-A-Za-z0-9_*]*"),
        ("float", "+-.0123456789", r"[-+]?[0-9]*\.[0-9]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+"),
        ("integer", "+-0123456789", r"[-+]?[0-9]+"),
        ("integer64", "+-0123456789", r"[-+]?[0-9]+LL?"),
        ("hex", "0", r"0[Xx][0-9A-Fa-f]+"),
        ("hex64", "0", r"0[Xx][0-9A-Fa-f]+LL?"),
        ("[", "[", r"\["),
        ("]", "]", r"\]"),
        ("(", "(", r"\("),
        (")", ")", r"\)"),
        (";", ";", r";"),
    )
)
# The rules worth trying at each first character, in flex order.
_CANDIDATES: Dict[str, List[Tuple[str, "re.Pattern[str]"]]] = {}
for _kind, _first, _rx in _RULES:
    for _char in _first:
        _CANDIDATES.setdefault(_char, []).append((_kind, _rx))
# libconfig skips only these: a vertical tab, a NUL or a Unicode space is a syntax error there.
_SPACE = re.compile(r"[ \t\r\n\f]+")
# flex's `$` needs the newline: libconfig refuses a comment on a last line that has none.
_LINE_COMMENT = re.compile(r"(?:#|//)[^\n]*(?=\n)")
_STRING_PIECE = re.compile(r'[^"\\]+|\\[nrtf\\"]|\\[Xx][0-9A-Fa-f]{2}|\\|"')
_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "f": b"\f", "\\": b"\\", '"': b'"'}
_KIND = {"integer": "int", "hex": "int", "integer64": "int64", "hex64": "int64",
         "float": "float", "boolean": "bool", "string": "string"}
_SHOWN = {"=": "'=' or ':'", "name": "a setting name"}


class _Failure(libconf.ConfigParseError):  # type: ignore[misc]
    """A syntax error at a line; turned into the caller's error class by `loads`."""

    def __init__(self, what: str, line: int) -> None:
        super().__init__(what)
        self.what = what
        self.line = line


class _Token(libconf.Token):  # type: ignore[misc]
    """A libconf token that carries its decoded value and libconfig type (`kind`)."""

    def __init__(self, type: str, text: str, filename: str, row: int, column: int,
                 value: Any = None) -> None:
        super().__init__(type, text, filename, row, column)
        self.value = value
        self.kind = _KIND.get(type, "")


def loads(text: Union[str, bytes], *, source: str, error: Type[OtadError] = ConfigError) -> Dict[str, Any]:
    """Parse libconfig `text` into plain values: groups → dict (in file order), lists `( )` →
    list, arrays `[ ]` → tuple (so the two stay apart), integers → int, floats → float,
    booleans → bool, strings → str.

    Every problem raises `error(what, where=f"{source}:{line}")`: syntax (with the column),
    a name set twice in one group, `@include`, an array of mixed types, nesting deeper than
    MAX_DEPTH, text that is not UTF-8.
    """
    text = _as_text(text, source, error)
    try:
        tokens = list(_Tokenizer(source).tokenize(text))
        last_line = text.count("\n") + 1
        return dict(_Parser(_TokenStream(tokens, last_line)).parse())
    except _Failure as exc:
        raise error(exc.what, f"{source}:{exc.line}") from None


def _as_text(text: Union[str, bytes], source: str, error: Type[OtadError]) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(f"not valid UTF-8: byte {data[exc.start]:#04x} at column {column}",
                    f"{source}:{line}") from None


class _Tokenizer(libconf.Tokenizer):  # type: ignore[misc]
    """libconfig 1.5's scanner: longest match, its escapes, its whitespace, no includes."""

    def tokenize(self, string: str) -> Iterator[_Token]:
        pos, line, line_start = 0, 1, 0
        while pos < len(string):
            start = pos
            if string.startswith("/*", pos):
                end = string.find("*/", pos + 2)
                if end < 0:
                    raise _Failure(f"unterminated /* comment starting at column {pos - line_start + 1}", line)
                pos = end + 2
            elif string[pos] == '"':
                value, pos = self._string(string, pos, line, pos - line_start + 1)
                yield _Token("string", string[start:pos], self.filename, line, start - line_start + 1, value)
            else:
                m = _SPACE.match(string, pos) or _LINE_COMMENT.match(string, pos)
                if m:
                    pos = m.end()
                else:
                    token = self._token(string, pos, line, pos - line_start + 1)
                    pos += len(token.text)
                    yield token
            newlines = string.count("\n", start, pos)
            if newlines:
                line += newlines
                line_start = string.rfind("\n", start, pos) + 1

    def _token(self, string: str, pos: int, line: int, column: int) -> _Token:
        best: Optional[Tuple[str, str]] = None
        for kind, rx in _CANDIDATES.get(string[pos], ()):
            m = rx.match(string, pos)
            if m and (best is None or len(m.group()) > len(best[1])):
                best = (kind, m.group())
        if best is None:
            if string.startswith(("#", "//"), pos):
                raise _Failure(f"the comment at column {column} ends the text without a newline, "
                               "which libconfig refuses", line)
            if string.startswith("@include", pos):
                raise _Failure("@include is not allowed: otad never reads another file", line)
            raise _Failure(f"syntax error: unexpected character {string[pos]!r} at column {column}", line)
        kind, text = best
        return _Token(kind, text, self.filename, line, column, _scalar(kind, text, line, column))

    @staticmethod
    def _string(string: str, pos: int, line: int, column: int) -> Tuple[str, int]:
        """Decode the string literal at `pos`; return its value and the position after it."""
        out = bytearray()
        pos += 1
        while True:
            m = _STRING_PIECE.match(string, pos)
            if m is None:
                raise _Failure(f"unterminated string starting at column {column}", line)
            piece, pos = m.group(), m.end()
            if piece == '"':
                break
            if piece.startswith("\\") and len(piece) == 2:
                out += _ESCAPES[piece[1]]
            elif piece.startswith("\\") and len(piece) == 4:
                # libconfig appends the byte as a C string: \x00 adds nothing.
                out += bytes([int(piece[2:], 16)]).strip(b"\0")
            elif "\0" in piece:
                raise _Failure(f"NUL character in the string starting at column {column}", line)
            else:
                out += piece.encode("utf-8")  # a lone backslash stays as written, like `\.`
        try:
            return out.decode("utf-8"), pos
        except UnicodeDecodeError:
            raise _Failure(f"\\x escapes in the string starting at column {column} are not valid UTF-8",
                           line) from None


def _scalar(kind: str, text: str, line: int, column: int) -> Any:
    """The value of a scalar token, checked against libconfig's ranges."""
    if kind == "boolean":
        return text.lower() == "true"
    if kind == "float":
        # libconfig uses atof(): "." or "-.e5" (no digit in the mantissa) is 0.
        return float(text) if re.search(r"[0-9]", text.split("e")[0].split("E")[0]) else 0.0
    if kind not in _KIND:
        return None
    digits = text.rstrip("L")
    hex_digits = kind.startswith("hex")
    sign, body = ("", digits[2:]) if hex_digits else (digits[:1].strip("0123456789"), digits.lstrip("+-"))
    body = body.lstrip("0") or "0"
    value = int(body, 16) if hex_digits else int(sign + body, 10) if len(body) <= 20 else 2**64
    low, high, bits = _RANGES[kind]
    if not low <= value <= high:
        raise _Failure(f"integer {text} at column {column} does not fit {bits} bits"
                       + (" (add L for 64)" if bits == 32 else ""), line)
    return value


class _TokenStream(libconf.TokenStream):  # type: ignore[misc]
    """libconf's token stream with errors that name the line and column."""

    def __init__(self, tokens: List[_Token], last_line: int) -> None:
        super().__init__(tokens)
        self.last_line = last_line

    def expect(self, *args: str) -> _Token:
        token = self.accept(*args)
        if token is None:
            self.error("expected " + " or ".join(_SHOWN.get(a, repr(a)) for a in args))
        return token  # type: ignore[no-any-return]

    def error(self, msg: str) -> None:
        token = self.peek()
        if token is None:
            raise _Failure(f"syntax error: unexpected end of input, {msg}", self.last_line)
        raise _Failure(f"syntax error: unexpected {token.text!r} at column {token.column}, {msg}", token.row)


class _Parser(libconf.Parser):  # type: ignore[misc]
    """libconf's grammar, corrected where libconfig 1.5 differs.

    Duplicate names and type-mixed arrays are errors, a trailing comma in a list or array is
    a syntax error, lists become Python lists and arrays tuples, nesting is bounded.
    """

    def __init__(self, tokenstream: _TokenStream) -> None:
        super().__init__(tokenstream)
        self.tokens: _TokenStream = tokenstream
        self.depth = 0
        self.array_kind = ""

    def configuration(self) -> Dict[str, Any]:
        result = self.setting_list_or_empty()
        if not self.tokens.finished():
            self.tokens.error("expected a setting name")
        return result

    def setting_list_or_empty(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {}
        lines: Dict[str, int] = {}
        while True:
            name = self.tokens.accept("name")
            if name is None:
                return result
            if name.text in result:
                raise _Failure(f"duplicate setting {name.text!r} at column {name.column} "
                               f"(first set on line {lines[name.text]})", name.row)
            lines[name.text] = name.row
            self.tokens.expect("=")
            value = self.value()
            if value is None:
                self.tokens.error("expected a value")
            self.tokens.accept(";", ",")
            result[name.text] = value

    def value_list_or_empty(self) -> List[Any]:
        return self._comma_separated_list_or_empty(self.value)

    def scalar_value_list_or_empty(self) -> Tuple[Any, ...]:
        self.array_kind = ""
        return tuple(self._comma_separated_list_or_empty(self._array_element))

    def _array_element(self) -> Any:
        token = self.tokens.peek()
        value = self.scalar_value()
        if value is None:
            return None
        kind = token.kind
        if not self.array_kind:
            self.array_kind = kind
        elif kind != self.array_kind:
            raise _Failure(f"mismatched element type in array: {token.text} at column {token.column} is "
                           f"{_article(kind)}, the array started with {_article(self.array_kind)}", token.row)
        return value

    def _comma_separated_list_or_empty(self, nonterminal: Any) -> List[Any]:
        value = nonterminal()
        if value is None:
            return []
        values = [value]
        while self.tokens.accept(","):
            value = nonterminal()
            if value is None:
                self.tokens.error("expected a value after ','")
            values.append(value)
        return values

    def _enclosed_block(self, start: str, nonterminal: Any, end: str) -> Any:
        opening = self.tokens.accept(start)
        if opening is None:
            return None
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Failure(f"nesting deeper than {MAX_DEPTH} levels at column {opening.column}", opening.row)
        result = nonterminal()
        self.tokens.expect(end)
        self.depth -= 1
        return result


def _article(kind: str) -> str:
    return {"int": "an int", "int64": "an int64 (L)"}.get(kind, f"a {kind}")


class Locator:
    """file:line of a key path (libconf keeps no positions, so the text is scanned again).

    Strings and comments are blanked out first, so a key is found only where it is set, in
    the group it belongs to (`watchdog.timeout_s`, not `health.timeout_s`).
    """

    _NOT_CODE = re.compile(r'"(?:[^"\\]|\\.)*"?|/\*.*?(?:\*/|\Z)|(?://|#)[^\n]*', re.DOTALL)
    _SETTING = re.compile(r"([A-Za-z*][-A-Za-z0-9_*]*)\s*[=:]")

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.code = self._NOT_CODE.sub(self._blank, text)

    @staticmethod
    def _blank(match: "re.Match[str]") -> str:
        """Spaces for a comment; a string keeps its quotes, so it still counts as a value."""
        text = match.group()
        inner = re.sub(r"[^\n]", " ", text)
        return f'"{inner[1:-1]}"' if text.startswith('"') and len(text) > 1 and text.endswith('"') else inner

    def __call__(self, *path: Union[str, int]) -> str:
        """The line of the deepest part of `path` that is found (the file alone if none is)."""
        span = (0, len(self.code))
        found: Optional[int] = None
        for part in path:
            located = self._find(part, span)
            if located is None:
                break
            found, span = located
        if found is None:
            return self.source
        return f"{self.source}:{self.code.count(chr(10), 0, found) + 1}"

    def _find(self, part: Union[str, int], span: Tuple[int, int]) -> Optional[Tuple[int, Tuple[int, int]]]:
        """Where `part` starts inside `span`, and the span of its value (inside brackets)."""
        if isinstance(part, int):
            elements = self._elements(span)
            return elements[part] if part < len(elements) else None
        settings = self._settings(span)
        return settings.get(part)

    def _settings(self, span: Tuple[int, int]) -> Dict[str, Tuple[int, Tuple[int, int]]]:
        """The settings of one group level: name → (offset, span of its value)."""
        out: Dict[str, Tuple[int, Tuple[int, int]]] = {}
        pos, end = span
        while pos < end:
            m = self._SETTING.search(self.code, pos, end)
            if m is None:
                break
            pos, inner = self._value(m.end(), end)
            out.setdefault(m.group(1), (m.start(), inner))
        return out

    def _elements(self, span: Tuple[int, int]) -> List[Tuple[int, Tuple[int, int]]]:
        """The elements of a list `( a, b )`: offset and span of each."""
        out: List[Tuple[int, Tuple[int, int]]] = []
        pos, end = span
        while True:
            while pos < end and self.code[pos] in " \t\r\n\f,":
                pos += 1
            if pos >= end:
                return out
            start = pos
            pos, inner = self._value(pos, end)
            out.append((start, inner))

    def _value(self, pos: int, end: int) -> Tuple[int, Tuple[int, int]]:
        """For the value starting at `pos`: where scanning goes on after it, and the span to
        search inside it (between the brackets of a group, list or array)."""
        while pos < end and self.code[pos] in " \t\r\n\f":
            pos += 1
        depth = 0
        for i in range(pos, end):
            char = self.code[i]
            if char in "{([":
                depth += 1
            elif char in "})]":
                depth -= 1
                if depth == 0:
                    return i + 1, (pos + 1, i)
                if depth < 0:
                    return i, (pos, i)
            elif char in ";," and depth == 0:
                return i + 1, (pos, i)
        return end, (pos, end)
