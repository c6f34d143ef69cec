"""otad.libconfig: libconfig text as libconfig 1.5 reads it, or a clear error naming the line."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otad import libconfig
from otad.errors import ConfigError, ManifestError


def loads(text: str) -> Any:
    return libconfig.loads(text, source="test.conf")


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads(text)
    return info.value


# --- forms ------------------------------------------------------------------------------------


def test_groups_lists_and_arrays_become_dict_list_and_tuple() -> None:
    tree = loads('a = { b = 1; }; l = ( 1, "two", { c = true; } ); arr = [ "x", "y" ]; e = (); f = []; g = {};')
    assert tree == {"a": {"b": 1}, "l": [1, "two", {"c": True}], "arr": ("x", "y"), "e": [], "f": (), "g": {}}
    assert type(tree["a"]) is dict and type(tree["l"]) is list and type(tree["arr"]) is tuple


def test_settings_keep_file_order() -> None:
    assert list(loads("z = 1; a = 2; m = 3;")) == ["z", "a", "m"]


def test_colon_and_equals_are_the_same_and_terminators_are_optional() -> None:
    assert loads("a: 1\nb = 2,\nc : 3;") == {"a": 1, "b": 2, "c": 3}


def test_integers_hex_long_suffix_and_leading_zeros() -> None:
    tree = loads("a = 0x1F; b = 5L; c = -7LL; d = 0x10L; e = 0123; f = 08; g = +4;")
    # libconfig reads 0123 with atoll(): decimal, not octal.
    assert tree == {"a": 31, "b": 5, "c": -7, "d": 16, "e": 123, "f": 8, "g": 4}


def test_integers_from_2_31_up_are_read_as_written() -> None:
    assert loads("a = 0x80000000; b = 3000000000; c = 0xFFFFFFFFFFFFFFFFL;") == {
        "a": 2**31, "b": 3000000000, "c": 2**64 - 1}


@pytest.mark.parametrize("text", ["a = 5000000000;", "a = 0x100000000;", "a = -2147483649;",
                                  "a = 99999999999999999999L;", "a = 0x1FFFFFFFFFFFFFFFFL;"])
def test_integers_that_libconfig_would_truncate_are_refused(text: str) -> None:
    assert "does not fit" in error_of(text).what


def test_floats_as_libconfig_writes_them() -> None:
    assert loads("a = 1.5; b = -.5; c = 1e3; d = 5.; e = 2.5E-1; f = .;") == {
        "a": 1.5, "b": -0.5, "c": 1000.0, "d": 5.0, "e": 0.25, "f": 0.0}


def test_booleans_in_any_case() -> None:
    assert loads("a = TRUE; b = False; c = tRuE;") == {"a": True, "b": False, "c": True}


def test_names_follow_libconfig_rules() -> None:
    assert loads("copy-1 = 1; *star = 2; x_y = 3; true-x = 4;") == {
        "copy-1": 1, "*star": 2, "x_y": 3, "true-x": 4}


@pytest.mark.parametrize("text", ["rev1.0 = 1;", "1abc = 2;", "-a = 1;", "a b = 1;", "true = 1;"])
def test_names_outside_libconfig_rules_are_syntax_errors(text: str) -> None:
    assert "syntax error" in error_of(text).what


# --- strings ----------------------------------------------------------------------------------


def test_adjacent_strings_are_concatenated() -> None:
    assert loads('a = "one" "two"\n  "three";') == {"a": "onetwothree"}


def test_known_escapes_are_decoded() -> None:
    assert loads(r'a = "q\"b\\n\nt\tr\rf\fx\x41";') == {"a": 'q"b\\n\nt\tr\rf\fxA'}


def test_unknown_escapes_are_kept_as_written() -> None:
    tree = loads(r'a = "#RE:^1\.0$"; b = "#RE:^1\\.0$"; c = "\a\v\'\x4";')
    assert tree["a"] == tree["b"] == r"#RE:^1\.0$"
    assert tree["c"] == r"\a\v\'\x4"


def test_hex_escapes_build_utf8_bytes_and_nul_adds_nothing() -> None:
    assert loads(r'a = "caf\xc3\xa9"; b = "x\x00y";') == {"a": "café", "b": "xy"}


def test_hex_escapes_that_are_not_utf8_are_refused() -> None:
    assert "not valid UTF-8" in error_of(r'a = "\xff";').what


def test_strings_may_span_lines_and_line_numbers_count_them() -> None:
    err = error_of('a = "one\ntwo\nthree";\nb = ;')
    assert err.where == "test.conf:4"


def test_unterminated_string_is_refused_naming_its_line() -> None:
    err = error_of('a = 1;\nb = "open')
    assert (err.where, "unterminated string" in err.what) == ("test.conf:2", True)


# --- comments ---------------------------------------------------------------------------------


def test_comments_of_all_three_kinds_are_skipped() -> None:
    text = "# hash\na = 1; // slashes\n/* block\n over lines */ b = 2; /**/ c /* inside */ = 3;\n"
    assert loads(text) == {"a": 1, "b": 2, "c": 3}


def test_unterminated_block_comment_is_refused() -> None:
    # libconfig silently drops the rest of the file; refusing is the safe reading.
    err = error_of("a = 1;\n/* never closed\nb = 2;\n")
    assert (err.where, "unterminated /* comment" in err.what) == ("test.conf:2", True)


def test_comment_on_a_last_line_without_newline_is_refused_like_libconfig() -> None:
    assert "without a newline" in error_of("a = 1; # end").what
    assert loads("a = 1; # end\n") == {"a": 1}


def test_hash_include_is_only_a_comment() -> None:
    assert loads('#include "other.cfg"\na = 1;\n') == {"a": 1}


# --- what libconf accepts and libconfig refuses -----------------------------------------------


def test_duplicate_setting_is_refused_naming_key_and_both_lines() -> None:
    err = error_of("a = 1;\nb = 2;\na = 3;\n")
    assert err.where == "test.conf:3"
    assert "duplicate setting 'a'" in err.what and "line 1" in err.what


def test_duplicate_in_a_nested_group_is_refused_but_same_name_in_two_groups_is_fine() -> None:
    assert loads("g = { a = 1; }; h = { a = 2; };") == {"g": {"a": 1}, "h": {"a": 2}}
    assert error_of("g = {\n  a = 1;\n  a = 2;\n};").where == "test.conf:3"


def test_include_is_refused_and_never_followed(tmp_path: Path) -> None:
    other = tmp_path / "other.cfg"
    other.write_text("secret = 1;\n")
    err = error_of(f'a = 1;\n@include "{other}"\n')
    assert err.where == "test.conf:2"
    assert "@include is not allowed" in err.what


@pytest.mark.parametrize("text", ["a = [1, 2,];", "a = (1, 2,);", "a = (,);"])
def test_trailing_comma_in_list_or_array_is_a_syntax_error(text: str) -> None:
    assert "syntax error" in error_of(text).what


def test_array_of_mixed_types_is_refused() -> None:
    err = error_of('a = [1, "two"];')
    assert "mismatched element type in array" in err.what and '"two"' in err.what


def test_array_of_int_and_hex_is_one_type_but_int_and_long_are_two() -> None:
    assert loads("a = [1, 0x2];") == {"a": (1, 2)}
    assert "mismatched" in error_of("a = [1, 2L];").what


def test_array_cannot_hold_groups_or_arrays() -> None:
    assert "syntax error" in error_of("a = [ { b = 1; } ];").what
    assert "syntax error" in error_of("a = [[1]];").what


# --- errors -----------------------------------------------------------------------------------


def test_syntax_error_names_line_and_column() -> None:
    err = error_of("a = 1;\nb = {\n  c = ;\n};\n")
    assert err.where == "test.conf:3"
    assert err.what == "syntax error: unexpected ';' at column 7, expected a value"


def test_unexpected_end_names_the_last_line() -> None:
    err = error_of("a = {\n  b = 1;\n")
    assert err.where == "test.conf:3"
    assert "unexpected end of input" in err.what


@pytest.mark.parametrize("char", ["\v", "\0", "\u00a0", "\u2028", "@", "$"])
def test_characters_libconfig_does_not_skip_are_syntax_errors(char: str) -> None:
    assert "syntax error" in error_of(f"a = 1;{char}b = 2;").what


def test_non_utf8_bytes_are_refused_naming_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        libconfig.loads(b"a = 1;\nb = \"\xff\";\n", source="x.conf")
    assert info.value.where == "x.conf:2" and "not valid UTF-8" in info.value.what


def test_bytes_input_is_decoded() -> None:
    assert libconfig.loads('a = "é";'.encode(), source="x") == {"a": "é"}


def test_errors_are_of_the_class_the_caller_asks_for() -> None:
    with pytest.raises(ManifestError) as info:
        libconfig.loads("a = ;", source="sw-description", error=ManifestError)
    assert str(info.value).startswith("sw-description:1: syntax error")


def test_nesting_is_bounded() -> None:
    depth = libconfig.MAX_DEPTH + 1
    err = error_of("a = " + "(" * depth + ")" * depth + ";")
    assert "nesting deeper than" in err.what
    assert loads("a = " + "(" * 10 + ")" * 10 + ";")["a"] == [[[[[[[[[[]]]]]]]]]]


def test_empty_text_is_an_empty_config() -> None:
    assert loads("") == {} and loads("  # nothing\n") == {}


# --- against the real libconfig 1.5 (Debian's libconfig9, used by SWUpdate) ---------------------


class _Libconfig:
    """A ctypes binding to libconfig.so.9, enough to read a text into Python values."""

    TYPES = {1: "group", 2: "int", 3: "int64", 4: "float", 5: "string", 6: "bool", 7: "array", 8: "list"}

    def __init__(self, lib: ctypes.CDLL) -> None:
        class Setting(ctypes.Structure):
            pass

        class List(ctypes.Structure):
            _fields_ = [("length", ctypes.c_uint), ("elements", ctypes.POINTER(ctypes.POINTER(Setting)))]

        class Value(ctypes.Union):
            _fields_ = [("ival", ctypes.c_int), ("llval", ctypes.c_longlong), ("fval", ctypes.c_double),
                        ("sval", ctypes.c_char_p), ("list", ctypes.POINTER(List))]

        Setting._fields_ = [("name", ctypes.c_char_p), ("type", ctypes.c_short), ("format", ctypes.c_short),
                            ("value", Value), ("parent", ctypes.c_void_p), ("config", ctypes.c_void_p),
                            ("hook", ctypes.c_void_p), ("line", ctypes.c_uint), ("file", ctypes.c_char_p)]

        class Config(ctypes.Structure):  # libconfig 1.5's config_t
            _fields_ = [("root", ctypes.POINTER(Setting)), ("destructor", ctypes.c_void_p),
                        ("options", ctypes.c_int), ("tab_width", ctypes.c_ushort),
                        ("default_format", ctypes.c_short), ("include_dir", ctypes.c_char_p),
                        ("error_text", ctypes.c_char_p), ("error_file", ctypes.c_char_p),
                        ("error_line", ctypes.c_int), ("error_type", ctypes.c_int),
                        ("filenames", ctypes.c_void_p), ("num_filenames", ctypes.c_uint)]

        self.lib = lib
        self.config_type = Config

    def loads(self, text: str) -> Optional[Any]:
        """The parsed values, or None when libconfig refuses the text."""
        config = self.config_type()
        self.lib.config_init(ctypes.byref(config))
        try:
            if not self.lib.config_read_string(ctypes.byref(config), text.encode()):
                return None
            return self._value(config.root.contents)
        finally:
            self.lib.config_destroy(ctypes.byref(config))

    def _value(self, setting: Any) -> Any:
        kind = self.TYPES[setting.type]
        if kind in ("group", "list", "array"):
            members = setting.value.list
            items = [members.contents.elements[i].contents for i in range(members.contents.length)] if members else []
            if kind == "group":
                return {item.name.decode(): self._value(item) for item in items}
            values = [self._value(item) for item in items]
            return tuple(values) if kind == "array" else values
        value = setting.value
        if kind == "string":
            return value.sval.decode()
        return {"int": value.ival, "int64": value.llval, "float": value.fval, "bool": bool(value.ival)}[kind]


def _real_libconfig() -> Optional[_Libconfig]:
    name = ctypes.util.find_library("config")
    if name is None or "9" not in name:
        return None
    return _Libconfig(ctypes.CDLL(name))


_REAL = _real_libconfig()

# Generated texts stay clear of the documented deviations: no integer libconfig would wrap to
# 32 bits, no unterminated string or comment at the end, no \x escape that is not UTF-8.
_spaces = st.sampled_from(["", " ", "\n", "\t", "\r\n", "\f", " /* c\n */ ", "# h\n", "// s\n"])
_scalars = st.sampled_from(["1", "-7", "+3", "0x1f", "0XABL", "12L", "-5LL", "1.5", "-.5", "1e3", "5.", ".",
                            "TRUE", "false", '"s"', '"a" "b"', r'"\x41\n\t\."', '"é"', r'"\\"', r'"q\"q"'])
_names = st.sampled_from(["a", "b", "true-x", "Tr", "x_1", "*s", "copy-1"])


def _values(depth: int) -> st.SearchStrategy[str]:
    if depth > 2:
        return _scalars
    arrays = st.lists(st.sampled_from(["1", '"s"', "2L", "1.0", "true", "0x3"]), max_size=3).map(
        lambda items: "[" + ",".join(items) + "]")
    lists = st.lists(st.deferred(lambda: _values(depth + 1)), max_size=3).map(
        lambda items: "(" + ", ".join(items) + ")")
    groups = st.deferred(lambda: _settings(depth + 1)).map(lambda body: "{" + body + "}")
    return st.one_of(_scalars, _scalars, arrays, lists, groups)


def _settings(depth: int) -> st.SearchStrategy[str]:
    setting = st.tuples(_spaces, _names, st.sampled_from(["=", ":", " = "]), _spaces, _values(depth),
                        st.sampled_from([";", ",", "", ";;", ",,"]), _spaces).map("".join)
    return st.lists(setting, max_size=4).map("".join)


@pytest.mark.oracle
@pytest.mark.skipif(_REAL is None, reason="libconfig.so.9 (Debian's libconfig9) not installed")
@settings(max_examples=400, deadline=None)
@given(_settings(0))
def test_accepts_what_libconfig_accepts_with_the_same_values_and_refuses_the_rest(text: str) -> None:
    assert _REAL is not None
    expected = _REAL.loads(text)
    try:
        got: Optional[Any] = loads(text)
    except ConfigError:
        got = None
    assert got == expected
