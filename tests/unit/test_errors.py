"""The tree drawn in errors.py's docstring is the tree of classes: every error, under its real base."""

from __future__ import annotations

import inspect
import re
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
