"""The tree drawn in errors.py's docstring is the tree of classes: every error, under its real base."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Dict, List, Tuple

from otad import errors

_ENTRY = re.compile(r"[├└]── ")
_ROOT = re.compile(r" +([A-Z][A-Za-z]+)")


def drawn_tree() -> Dict[str, str]:
    """Each class drawn in the docstring → the class drawn above it (by the column of its ├──).

    An entry is `├── Name  description`, or several names `├── A, B (401),` whose list goes on
    in the next line."""
    parents: Dict[str, str] = {}
    stack: List[Tuple[int, str]] = []  # (column, name) of the branches above the current line
    parent, continued = "", False
    for line in (errors.__doc__ or "").splitlines():
        entry, root = _ENTRY.search(line), _ROOT.fullmatch(line)
        if entry is not None:
            while stack and stack[-1][0] >= entry.start():
                stack.pop()
            parent, names = stack[-1][1], re.split(r" {2,}", line[entry.end():])[0]
        elif continued:
            names = line.strip(" │")
        elif root is not None:
            stack = [(root.start(1), root.group(1))]
            continue
        else:
            continue
        drawn = [name.split(" (")[0] for name in names.rstrip(",").split(", ")]
        parents.update((name, parent) for name in drawn)
        if entry is not None:
            stack.append((entry.start(), drawn[0]))
        continued = names.endswith(",")
    return parents


def test_errors_docstring_draws_every_error_under_its_base() -> None:
    classes = {name: cls for name, cls in vars(errors).items()
               if inspect.isclass(cls) and issubclass(cls, (errors.OtadError, errors.Interrupted))}
    drawn = drawn_tree()
    missing = sorted(set(classes) - set(drawn) - {"OtadError"})
    assert not missing, f"not drawn in errors.py's docstring: {missing}"
    for name, cls in classes.items():
        if name != "OtadError":
            assert drawn[name] == cls.__bases__[0].__name__, f"{name} is drawn under {drawn[name]}"


def readme_exit_table() -> Dict[int, str]:
    """README's "Exit status" table: status → the row's text (meaning and errors)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Exit status", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (\d+) \|(.*)\|$", section, re.MULTILINE)
    return {int(status): text for status, text in rows}


def test_every_error_family_has_a_deliberate_exit_status_named_in_the_readme() -> None:
    """Each family states its status in its own class, and README's table names it in that row
    (a status-1 family may be named in the by-step rows 3 and 5 instead)."""
    table = readme_exit_table()
    assert sorted(table) == [0, 1, 2, 3, 4, 5, 75, 130]
    families = [cls for cls in vars(errors).values() if inspect.isclass(cls)
                and cls.__bases__[0] in (errors.OtadError, KeyboardInterrupt)]
    assert len(families) > 15
    for cls in families:
        assert "exit_code" in vars(cls), f"{cls.__name__} inherits its exit status instead of stating it"
    for cls in [c for c in vars(errors).values() if inspect.isclass(c) and "exit_code" in vars(c)]:
        if cls is errors.OtadError:
            continue
        rows = [table[cls.exit_code]] + ([table[3], table[5]] if cls.exit_code == errors.OTHER else [])
        assert any(re.search(rf"\b{cls.__name__}\b", row) for row in rows), \
            f"{cls.__name__} (exit {cls.exit_code}) is not named in README's row for it"
