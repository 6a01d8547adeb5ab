"""Every relative link in README.md and docs/*.md leads somewhere: the file exists and, for a
`#anchor`, the target page has a heading with that anchor (GitHub's rule for making one). So a
page moved or a heading renamed breaks the suite, not a reader's click."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")
MD_MENTION = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")


def prose_lines(page: Path, keep_code: bool = False) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code removed (unless keep_code):
    a `[x](y)` inside code is an example, not a link."""
    lines, fenced = [], False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line if keep_code else INLINE_CODE.sub("", line))
    return lines


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens; a repeated
    heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    for line in prose_lines(page, keep_code=True):
        match = re.match(r"#{1,6} +(.*?)\s*#*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            if count:
                seen[f"{slug}-{count}"] = 1
    return set(seen)


def relative_links(page: Path) -> list[str]:
    return [target for line in prose_lines(page) for target in LINK.findall(line)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]       # http:, https:, mailto: ...


def test_there_are_pages_and_links_to_check():
    assert (ROOT / "docs" / "design.md") in PAGES
    assert len(relative_links(ROOT / "README.md")) >= 7             # the Documentation list at least


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_an_existing_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_markdown_file_named_in_prose_exists(page):
    """A page named in passing ("DESIGN.md's invariants") must exist too, as a link would."""
    named = {name for line in prose_lines(page) for name in MD_MENTION.findall(line)}
    missing = [name for name in sorted(named)
               if not (page.parent / name).exists() and not (ROOT / name).exists()]
    assert not missing, missing
