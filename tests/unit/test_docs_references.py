"""Documentation names only files that exist and cites only documents kept in this repository.

Checked: README.md, every file under docs/, and the comments and docstrings of first-party Python
files. A named repository path (``docs/secagg.md``, ``coordinator/service/facade.py``, a markdown
link, a ``#section`` of a markdown file) must exist; a citation of a design page or fault matrix
kept outside the repository is an offence, because a reader of the repository cannot follow it.
Each offence is reported as ``file:line``.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# First-party Python whose comments and docstrings are read by people; generated wire code is not.
PYTHON_DIRS = ("coordinator", "participant", "fedsilo", "secagg", "examples", "tests", "scripts")
PYTHON_EXCLUDED = ("fedsilo/v1/",)

# Top-level directories and files of this repository: a path starting with one of them is a
# claim that the file exists here.
REPO_DIRS = (
    "coordinator",
    "participant",
    "fedsilo",
    "secagg",
    "examples",
    "tests",
    "scripts",
    "docs",
    "protos",
    "deploy",
    "bench",
    ".ci",
)
REPO_TOP_FILES = ("README.md", "Makefile", "pyproject.toml")

_PATH_RE = re.compile(
    r"(?<![\w./@:-])"  # not the tail of a longer path, a URL or an e-mail address
    r"((?:" + "|".join(re.escape(d) for d in REPO_DIRS) + r")/[\w./-]*[\w/]"
    r"(?:#[\w-]+)?)"
)
_TOP_FILE_RE = re.compile(
    r"(?<![\w./-])(" + "|".join(re.escape(f) for f in REPO_TOP_FILES) + r")(?![\w-])"
)
_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")

# Documents kept beside the repository, not in it.
_EXTERNAL_RE = re.compile(
    r"DESIGN\.md|\bDESIGN\s*§|\bDESIGN's\b|TEST-MATRIX|(?:\.\./)+shared\b|/work/shared"
)


@dataclass(frozen=True)
class Offence:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


@dataclass(frozen=True)
class Text:
    """A piece of prose with the repository file and line it comes from."""

    path: str
    line: int
    text: str


def markdown_files(root: Path) -> list[Path]:
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted(p for p in (root / "docs").rglob("*") if p.is_file())


def python_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for top in PYTHON_DIRS:
        for path in sorted((root / top).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if not relative.startswith(PYTHON_EXCLUDED) and ".venv" not in path.parts:
                found.append(path)
    return found


def markdown_lines(path: Path, root: Path) -> Iterator[Text]:
    relative = path.relative_to(root).as_posix()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        yield Text(relative, number, line)


def python_prose(path: Path, root: Path) -> Iterator[Text]:
    """Comments and docstrings (string statements) of a Python file, line by line."""
    relative = path.relative_to(root).as_posix()
    source = path.read_text(encoding="utf-8")
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    statement_start = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT}
    previous = tokenize.NEWLINE
    for index, token in enumerate(tokens):
        if token.type == tokenize.COMMENT:
            yield Text(relative, token.start[0], token.string)
        elif token.type == tokenize.STRING and previous in statement_start:
            following = tokens[index + 1].type if index + 1 < len(tokens) else tokenize.ENDMARKER
            if following in (tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.COMMENT):
                for offset, line in enumerate(token.string.splitlines()):
                    yield Text(relative, token.start[0] + offset, line)
        if token.type not in (tokenize.COMMENT, tokenize.NL):
            previous = token.type


def heading_anchors(markdown: Path) -> set[str]:
    """GitHub-style anchors of a markdown file's headings."""
    anchors: set[str] = set()
    in_fence = False
    for line in markdown.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not in_fence:
            title = match.group(1).lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors


def names_a_file(candidate: str, root: Path) -> bool:
    """Whether a path-like word in prose claims a repository file or directory.

    A name with a file extension always does. One without (``fedsilo/secagg/v1/share`` is a
    domain-separation label, not a path) does only when its parent directory exists, i.e. it
    names an entry of a real directory.
    """
    location = candidate.partition("#")[0].rstrip("./")
    if "." in location.rsplit("/", 1)[-1]:
        return True
    return (root / location).parent.is_dir()


def missing_target(target: str, base: Path, root: Path) -> str | None:
    """Why ``target`` (a path, optionally with ``#anchor``) does not resolve, or None."""
    location, _, anchor = target.partition("#")
    location = location.rstrip(".")
    if not location:
        return None
    resolved = (base / location).resolve()
    try:
        resolved.relative_to(root)
    except ValueError:
        return f"{target} points outside the repository"
    if not resolved.exists():
        return f"{location} does not exist"
    if anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
        return f"{location} has no section #{anchor}"
    return None


def offences_in(text: Text, root: Path, markdown: bool) -> Iterator[Offence]:
    for match in _EXTERNAL_RE.finditer(text.text):
        yield Offence(
            text.path,
            text.line,
            f"cites {match.group(0)!r}, a document outside the repository (cite docs/ instead)",
        )
    named: set[str] = set()
    for match in _PATH_RE.finditer(text.text):
        if not names_a_file(match.group(1), root):
            continue
        named.add(match.group(1))
        problem = missing_target(match.group(1), root, root)
        if problem:
            yield Offence(text.path, text.line, f"names {match.group(1)}: {problem}")
    for match in _TOP_FILE_RE.finditer(text.text):
        if not (root / match.group(1)).exists():
            yield Offence(text.path, text.line, f"names {match.group(1)}, which does not exist")
    if markdown:
        base = (root / text.path).parent
        for match in _LINK_RE.finditer(text.text):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            if target in named and base == root:
                continue  # already reported as a named path
            if target.startswith("#"):
                if target[1:] not in heading_anchors(root / text.path):
                    yield Offence(text.path, text.line, f"links to missing section {target}")
                continue
            problem = missing_target(target, base, root)
            if problem:
                yield Offence(text.path, text.line, f"links to {target}: {problem}")


def check_markdown(root: Path) -> list[Offence]:
    return [
        offence
        for path in markdown_files(root)
        for text in markdown_lines(path, root)
        for offence in offences_in(text, root, markdown=True)
    ]


def check_python(root: Path) -> list[Offence]:
    return [
        offence
        for path in python_files(root)
        for text in python_prose(path, root)
        for offence in offences_in(text, root, markdown=False)
    ]


_CITED_TEST_RE = re.compile(r"`((?:tests/[\w/]+\.py)?)::(test_\w+)(?:\[[^\]]*\])?`")


def missing_cited_tests(markdown: Path, root: Path) -> list[Offence]:
    """``file::test`` names of a markdown table that do not exist.

    In one table row, ``::test`` without a file continues the file named before it.
    """
    relative = markdown.relative_to(root).as_posix()
    offences: list[Offence] = []
    lines = markdown.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        current: str | None = None
        for match in _CITED_TEST_RE.finditer(line):
            current = match.group(1) or current
            name = match.group(2)
            if current is None:
                offences.append(Offence(relative, number, f"::{name} names no file"))
                continue
            source = root / current
            defined = source.is_file() and re.search(
                rf"^\s*def {name}\(", source.read_text(encoding="utf-8"), re.MULTILINE
            )
            if not defined:
                offences.append(Offence(relative, number, f"{current}::{name} does not exist"))
    return offences


def _report(offences: list[Offence]) -> str:
    return f"{len(offences)} offences:\n" + "\n".join(str(o) for o in offences)


# -- the repository ------------------------------------------------------------------------------


def test_readme_and_docs_name_existing_files_and_cite_only_the_repository() -> None:
    offences = check_markdown(ROOT)
    assert offences == [], _report(offences)


def test_python_comments_and_docstrings_name_existing_files_and_cite_only_the_repository() -> None:
    offences = check_python(ROOT)
    assert offences == [], _report(offences)


def test_the_fault_matrix_names_tests_that_exist() -> None:
    offences = missing_cited_tests(ROOT / "docs" / "fault-matrix.md", ROOT)
    assert offences == [], _report(offences)


def test_the_checks_see_the_files_they_claim_to() -> None:
    assert ROOT / "README.md" in markdown_files(ROOT)
    assert ROOT / "docs" / "requirements.md" in markdown_files(ROOT)
    checked = {p.relative_to(ROOT).as_posix() for p in python_files(ROOT)}
    assert "coordinator/domain/rounds.py" in checked
    assert "tests/unit/test_docs_references.py" in checked
    assert not any(path.startswith("fedsilo/v1/") for path in checked)


# -- the checker itself, on a small repository made here -----------------------------------------


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "coordinator").mkdir()
    (tmp_path / "coordinator" / "rounds.py").write_text('"""Rounds."""\n')
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Encoding rules\n\ntext\n")
    return tmp_path


def _lines(offences: list[Offence]) -> list[tuple[str, int]]:
    return [(o.path, o.line) for o in offences]


def test_missing_files_links_and_sections_are_reported_with_their_line(tiny_repo: Path) -> None:
    (tiny_repo / "README.md").write_text(
        "See docs/guide.md and coordinator/rounds.py.\n"  # 1: fine
        "See [the guide](docs/guide.md#encoding-rules).\n"  # 2: fine
        "See docs/missing.md.\n"  # 3: missing file
        "See [old](docs/old.md).\n"  # 4: missing link target
        "See docs/guide.md#no-such-section.\n"  # 5: missing section
        "See [top](#nowhere) and https://example.org/docs/x.md.\n"  # 6: missing local section
        "The label `fedsilo/secagg/v1/share` is no path; see [Guide](docs/guide.md#guide).\n"
        "See coordinator/missing/ for nothing.\n"  # 8: missing directory of a real one
    )
    offences = check_markdown(tiny_repo)
    assert _lines(offences) == [("README.md", n) for n in (3, 4, 5, 6, 8)]


def test_relative_links_resolve_from_the_file_that_holds_them(tiny_repo: Path) -> None:
    (tiny_repo / "docs" / "other.md").write_text(
        "[guide](guide.md)\n[up](../coordinator/rounds.py)\n[gone](../README.md)\n"
    )
    assert _lines(check_markdown(tiny_repo)) == [("docs/other.md", 3)]


def test_citations_of_outside_documents_are_reported(tiny_repo: Path) -> None:
    outside = "DESIGN" + " §4.1"  # split so this file does not cite it itself
    matrix = "TEST-" + "MATRIX R5"
    (tiny_repo / "docs" / "guide.md").write_text(f"# Guide\n\nAs in {outside}.\n\nok\n")
    (tiny_repo / "coordinator" / "rounds.py").write_text(
        f'"""Rounds ({outside}).\n\nMore.\n"""\n\n'
        f"x = '{matrix}'  # a string in code is not prose\n"
        f"# but a comment is: {matrix}\n"
        "def f() -> None:\n"
        '    """Also see coordinator/gone.py."""\n'
    )
    assert _lines(check_markdown(tiny_repo)) == [("docs/guide.md", 3)]
    assert _lines(check_python(tiny_repo)) == [
        ("coordinator/rounds.py", 1),
        ("coordinator/rounds.py", 7),
        ("coordinator/rounds.py", 9),
    ]


def test_cited_tests_must_exist(tiny_repo: Path) -> None:
    (tiny_repo / "tests").mkdir()
    (tiny_repo / "tests" / "test_a.py").write_text("def test_one() -> None:\n    pass\n")
    matrix = tiny_repo / "docs" / "matrix.md"
    matrix.write_text(
        "| R1 | `tests/test_a.py::test_one`, `::test_one[x]` |\n"
        "| R2 | `tests/test_a.py::test_two` |\n"
        "| R3 | `::test_one` |\n"
        "| R4 | `tests/test_b.py::test_one` |\n"
    )
    assert _lines(missing_cited_tests(matrix, tiny_repo)) == [
        ("docs/matrix.md", 2),
        ("docs/matrix.md", 3),
        ("docs/matrix.md", 4),
    ]
