"""Every relative link in the README and docs/ leads to a file that exists, and every anchor to a
heading of the page it names.

Reads files only: no database, no settings. Links inside code (fenced blocks and inline code
spans) are not links and are skipped, as are links with a scheme (https:, mailto:...).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(].*?[\"')])?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@pytest.fixture(autouse=True)
def fresh_cache():
    """The suite's autouse fixture clears Django's cache; this test reads files only, and runs
    without Django too (``-p no:django``)."""


@pytest.fixture(scope="session", autouse=True)
def test_server_settings():
    """As above: no Django settings are needed here."""


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)[0] * len(opening.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        lines.append((number, INLINE_CODE.sub("", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except '-' and '_',
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Anchors of every heading of a markdown file; repeated headings get -1, -2... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline and reference-style link of a markdown file."""
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            found.append((number, definition.group(1)))
            continue
        found.extend((number, match.group(1)) for match in INLINE_LINK.finditer(line))
    return [(number, target.strip("<>")) for number, target in found]


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in links(page):
        if SCHEME.match(target):
            continue
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / unquote(path_part)).resolve() if path_part else page
        if not destination.exists():
            problems.append(f"{where} (no such file: {shown(destination)})")
        elif anchor and destination.suffix == ".md" and unquote(anchor) not in anchors(destination):
            problems.append(f"{where} (no heading #{anchor} in {shown(destination)})")
    return problems


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def test_every_relative_link_of_the_docs_resolves():
    assert PAGES[0].exists() and len(PAGES) > 1, "README.md and docs/*.md are where the docs live"
    problems = [problem for page in PAGES for problem in broken_links(page)]
    assert not problems, f"{len(problems)} broken links:\n" + "\n".join(problems)
