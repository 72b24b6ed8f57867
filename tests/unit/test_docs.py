"""The README and docs/ link to files and headings that exist, so a moved section cannot leave a dead link."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, file:


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _prose(text: str) -> Iterable[str]:
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(page.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(root: Path) -> list[str]:
    """Every relative link in README.md and docs/*.md whose file, or #heading, does not exist."""
    root = root.resolve()
    found = []
    for page in pages(root):
        for line in _prose(page.read_text(encoding="utf-8")):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                if EXTERNAL.match(target):
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / unquote(path)).resolve() if path else page
                where = f"{page.relative_to(root)}: ({target})"
                if not dest.is_relative_to(root) or not dest.exists():
                    found.append(f"{where}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    found.append(f"{where}: no heading #{anchor} in {dest.relative_to(root)}")
    return found


def test_every_relative_link_in_the_readme_and_docs_resolves() -> None:
    assert broken_links(ROOT) == []


def test_the_readme_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name})" not in readme] == []


def test_slugs_are_githubs() -> None:
    assert slug("Bringing up the hardware: `voice-appliance check`") == "bringing-up-the-hardware-voice-appliance-check"
    assert slug("What `install.sh` installs") == "what-installsh-installs"
    assert slug("Press → connected") == "press--connected"
    assert slug("`[[leds.output]]`") == "ledsoutput"


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    for page in pages(ROOT):
        shutil.copy(page, root / page.relative_to(ROOT))
    return root


def _plant(page: Path, text: str) -> None:
    page.write_text(page.read_text(encoding="utf-8") + text, encoding="utf-8")


def test_a_planted_link_to_a_missing_file_is_caught(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    before = set(broken_links(root))  # the copy lacks examples/ and the like: only the planted ones count
    _plant(root / "docs" / "install.md", "\nSee [the old page](gone.md) and [up](../../outside.md).\n")
    assert set(broken_links(root)) - before == {
        "docs/install.md: (gone.md): no such file",
        "docs/install.md: (../../outside.md): no such file",
    }


def test_a_planted_link_to_a_missing_heading_is_caught(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    planted = "[ok](docs/hardware.md#sound-cards) [gone](docs/hardware.md#no-such-part) [here](#nowhere)"
    _plant(root / "README.md", f"\n{planted}\n")
    assert [b for b in broken_links(root) if "sound-cards" in b or "no-such-part" in b or "nowhere" in b] == [
        "README.md: (docs/hardware.md#no-such-part): no heading #no-such-part in docs/hardware.md",
        "README.md: (#nowhere): no heading #nowhere in README.md",
    ]


def test_links_and_headings_in_code_blocks_do_not_count(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    before = set(broken_links(root))
    _plant(root / "docs" / "bench.md", "\n```\n[x](gone.md)\n# Fake heading\n```\n\n`[y](gone.md)`\n")
    assert set(broken_links(root)) == before
    assert "fake-heading" not in anchors(root / "docs" / "bench.md")
