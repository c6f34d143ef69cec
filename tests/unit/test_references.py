"""Every file or doc that the repository's files point at exists.

Three kinds of reference are followed: repository paths (`docs/deploying.md`, `etc/boot.cmd`,
`scripts/setup`, `init.d/S98otad`, `otad/cli.py`, ...), relative markdown links, and `see FILE`
remarks. README, docs/, etc/, init.d/, scripts/, otad/ and .ci/ are read whole; in tests/ only
comments and docstrings count, since its string literals are file trees for bundles and
images, not references. A path written after '/', '~', '$' or a word character
is absolute or built (`/etc/otad/otad.conf`, `{root}/etc/...`) and not a reference.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
READ_WHOLE = ("README.md", "docs", "etc", "init.d", "scripts", "otad", ".ci")
READ_COMMENTS = ("tests",)
TOP_DIRS = ("docs", "etc", "init.d", "scripts", "otad", "tests", ".ci")

PATH = re.compile(r"(?<![\w./~$@-])((?:%s)/[\w.+/-]*[\w+])" % "|".join(re.escape(d) for d in TOP_DIRS))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SEE = re.compile(r"\b[Ss]ee:?\s+[`'\"]?([\w.+/-]+\.(?:md|py|cmd|conf|config|service|txt|sh|cfg|toml|json))\b")

Reference = Tuple[str, int, str]  # (citing file, line, what it names)


def source_files() -> List[Path]:
    files: List[Path] = []
    for top in READ_WHOLE + READ_COMMENTS:
        path = REPO / top
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in candidates if "__pycache__" not in p.parts and not p.name.endswith(".pyc")]
    return files


def is_python(path: Path, text: str) -> bool:
    return path.suffix == ".py" or text.startswith("#!") and "python" in text.split("\n", 1)[0]


def comments_and_docstrings(text: str) -> Iterator[Tuple[int, str]]:
    """(first line, text) of each comment and docstring of Python source."""
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                yield first.lineno, first.value.value


def readable_parts(path: Path) -> Iterator[Tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return  # binary: refers to nothing
    rel = path.relative_to(REPO).parts[0]
    if rel in READ_COMMENTS and is_python(path, text):
        yield from comments_and_docstrings(text)
    else:
        yield 1, text


def references(path: Path) -> Iterator[Tuple[int, str, str]]:
    """(line, kind, target) for each reference in `path`."""
    for first_line, part in readable_parts(path):
        for offset, line in enumerate(part.split("\n")):
            lineno = first_line + offset
            for match in PATH.finditer(line):
                yield lineno, "path", match.group(1)
            if path.suffix == ".md":
                for match in LINK.finditer(line):
                    yield lineno, "link", match.group(1)
            for match in SEE.finditer(line):
                yield lineno, "see", match.group(1)


def resolves(path: Path, kind: str, target: str, names: set) -> bool:
    if kind == "path":
        return (REPO / target).exists()
    if kind == "link":
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return True  # a URL, mailto: or an anchor in the same page
        return (path.parent / target.split("#", 1)[0]).exists()
    if target.startswith("/"):
        return True  # `see /etc/fw_env.config`: a file on the device
    return (REPO / target).exists() or (path.parent / target).exists() or Path(target).name in names


def broken_references() -> List[Reference]:
    files = source_files()
    names = {p.name for p in files} | {p.name for p in REPO.iterdir()}
    broken: List[Reference] = []
    seen = set()
    for path in files:
        for line, kind, target in references(path):
            where = (str(path.relative_to(REPO)), line)
            if (where, target) not in seen and not resolves(path, kind, target, names):
                seen.add((where, target))
                broken.append((*where, f"{kind} {target}"))
    return broken


def test_every_referenced_file_exists() -> None:
    broken = broken_references()
    assert broken == [], "\n".join(f"{where}:{line}: {what} does not exist" for where, line, what in broken)


@pytest.mark.parametrize("text, found", [
    ("# see docs/missing.md for the rules", ["path docs/missing.md"]),
    ("[design](docs/nope.md) [up](../nope.md)", ["path docs/nope.md", "link ../nope.md"]),
    ("note: see otad.conff", []),
    ("# (see nothing-here.md)", ["see nothing-here.md"]),
    ("echo /etc/otad/otad.conf {root}/etc/x https://x.org/docs/y.md", []),
    ("[ok](../README.md) [web](https://example.org/a.md) [anchor](#status)", []),
])
def test_the_walker_finds_broken_references(tmp_path: Path, monkeypatch, text: str, found: List[str]) -> None:
    """The walk itself can fail: a file citing missing things is reported, a clean one is not."""
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# readme\n")
    (tmp_path / "docs" / "page.md").write_text(text + "\n")
    assert [what for _, _, what in broken_references()] == found
