"""The docs a user reads: a short README whose first two commands are the ones CI runs, and
no broken link between README.md, WORKSPACE.md and the pages under docs/.

Anchors are checked as GitHub renders them: a heading's text lower-cased, punctuation other
than `-` and `_` dropped, spaces turned into `-`, and `-1`, `-2`... appended to repeats.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "WORKSPACE.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 170  # the front door: about 150 lines, as the ecosystem's READMEs

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `#` in a shell block is not a heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks of a page, in order, each as its text."""
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            if count:
                seen[f"{base}-{count}"] = 1
    return set(seen)


def relative_links(path: Path) -> list[str]:
    links = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                links.append(target)
    return links


def test_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT.resolve())}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_every_docs_page_is_one_click_from_the_readme():
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in relative_links(README)
        if target.partition("#")[0]
    }
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def ci_test_command() -> str:
    """The last command of .ci/run: the test command it runs."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return commands[-1]


def test_readme_first_commands_are_the_main_job_and_the_ci_test_command():
    first, second = code_blocks(README.read_text(encoding="utf-8"))[:2]
    # The second is the suite, exactly as CI runs it.
    assert second.strip() == ci_test_command()
    assert "python -m pytest -q tests" in second
    # The first installs the project with the test extra and runs the main job on the
    # shipped examples with the default generator (no --generator: the embedded default).
    assert 'pip install -e ".[test]"' in first
    run = shlex.split(first.split("&&")[-1])
    assert run[:2] == ["python", "experiments/run.py"] and "--generator" not in run
    flags = dict(zip(run[2::2], run[3::2], strict=True))
    assert set(flags) == {"--input_dir", "--output_dir"}
    assert (ROOT / "experiments" / "run.py").is_file()
    assert any((ROOT / flags["--input_dir"]).glob("*.png"))
    # The README says where that command's results land.
    assert f"`{flags['--output_dir']}/<name>/comparison.png`" in README.read_text(encoding="utf-8")
