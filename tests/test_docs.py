"""The repository explains itself: its documents are its own, and their links resolve.

No file may cite the team's outside notes (the two names are built below so that this file does
not name them itself): a reader of the repository has ``docs/`` and the README, nothing else.
Relative links between the README and ``docs/`` must reach an existing file and, when they name
a section, a heading of that file (GitHub's anchor rule).
"""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
OUTSIDE_NOTES = tuple(name + ".md" for name in ("DESIGN", "FORMATS"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _repository_files() -> list[pathlib.Path]:
    """Tracked files and untracked ones git does not ignore, as in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_no_file_cites_documents_outside_the_repository() -> None:
    files = _repository_files()
    assert ROOT / "pyproject.toml" in files
    citing = []
    for path in files:
        text = path.read_bytes().decode("utf-8", errors="replace")
        citing += [f"{path.relative_to(ROOT)}: {name}" for name in OUTSIDE_NOTES if name in text]
    assert citing == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {_anchor(heading) for heading in headings}


def _relative_links(path: pathlib.Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [link for link in LINK.findall(text) if not re.match(r"^[a-z]+:", link)]


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_reach_a_file_and_a_heading(page: pathlib.Path) -> None:
    for link in _relative_links(page):
        target, _, section = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link} names no file"
        if section and path.suffix == ".md":
            assert section in _anchors(path), f"{page.name}: {link} names no heading of {path.name}"


def test_the_readme_points_to_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = sorted(DOCS.glob("*.md"))
    assert {page.name for page in pages} >= {"architecture.md", "formats.md", "contracts.md"}
    for page in pages:
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
