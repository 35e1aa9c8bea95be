"""README.md renders as written: every heading is a heading, no code fence swallows prose.

Parsed with markdown-it-py in CommonMark mode (the parser rich uses; the same rules as
GitHub for headings and fences). A fence opened by mistake — an extra ```` ``` ```` after a
code block — silently turns every following section into code until the next fence, so the
checks do not trust the parser's idea of where code is: they look for section headings
and fence openers inside what it calls code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

markdown_it = pytest.importorskip("markdown_it")

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: A line that reads as an ATX heading (``# Title`` … ``###### Title``).
HEADING_LINE = re.compile(r"^ {0,3}#{1,6}(\s|$)")
#: A line that opens a fence with an info string (```` ```python ````): never inside a code block.
FENCE_OPENER = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*[A-Za-z]")


def _tokens(text: str) -> list:
    return markdown_it.MarkdownIt("commonmark").parse(text)


def _problems(text: str) -> list[str]:
    lines = text.splitlines()
    tokens = _tokens(text)
    headings = {t.map[0] for t in tokens if t.type == "heading_open" and t.map}
    in_code: set[int] = set()
    problems: list[str] = []
    for t in tokens:
        if t.type not in ("fence", "code_block") or not t.map:
            continue
        start, end = t.map
        in_code.update(range(start, end))
        if t.type == "fence":
            closer = lines[end - 1].strip() if end - 1 > start else ""
            if not (closer.startswith(t.markup) and set(closer) == {t.markup[0]}):
                problems.append(f"line {start + 1}: fence {t.markup}{t.info} is never closed")
            for i, line in enumerate(t.content.splitlines(), start + 2):
                if FENCE_OPENER.match(line):
                    problems.append(f"line {i}: fence opener {line.strip()!r} inside the code block from line {start + 1}")
                if re.match(r"^#{2,6} \S", line) and t.info.strip() in ("", "markdown", "md"):
                    problems.append(f"line {i}: section heading {line.strip()!r} inside the code block from line {start + 1}")
    for i, line in enumerate(lines):
        if HEADING_LINE.match(line) and i not in in_code and i not in headings:
            problems.append(f"line {i + 1}: {line.strip()!r} looks like a heading but does not render as one")
    return problems


def test_readme_headings_render_and_fences_balance() -> None:
    assert _problems(README.read_text(encoding="utf-8")) == []


def test_readme_sections_are_headings() -> None:
    tokens = _tokens(README.read_text(encoding="utf-8"))
    titles = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h2"]
    for section in ("Safety", "Reference models (`models/`)", "How onnxcomp compares with other tools", "Architecture"):
        assert section in titles, titles


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("# A\n\n```python\nx = 1\n```\n```\n\n## Swallowed\n\ntext\n\n```bash\nls\n```\n", "fence opener"),
        ("# A\n\n```markdown\n## Inside\n", "never closed"),
        ("# A\n\n    ## indented: code, fine\n\n#NoSpace is a paragraph\n", None),
        ("# A\n\nsome text\n## B\n\n```bash\n# a shell comment\n```\n", None),
    ],
    ids=["stray-fence", "unclosed-fence", "indented-code", "comment-in-code"],
)
def test_the_checks_catch_what_they_claim(text: str, found: str | None) -> None:
    problems = _problems(text)
    if found is None:
        assert problems == []
    else:
        assert any(found in p for p in problems), problems


def test_readme_says_where_python_m_models_runs() -> None:
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "from the repository root" in text and "python -m models" in text
