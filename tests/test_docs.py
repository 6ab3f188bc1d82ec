"""The README stays a front page (the reference lives in docs/), and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]


def test_readme_is_a_front_page() -> None:
    assert len((REPO / "README.md").read_bytes()) < 15_000  # what a newcomer reads; the reference goes in docs/


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            target = link.split("#")[0]
            if target and not link.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {link}")
    assert broken == []
