"""Every ```python block of README.md and docs/*.md runs as written, each on its own.

A block runs in a fresh namespace. The line right above its fence may mark it:
``<!-- no-torch: ... -->`` runs it in a new process where ``import torch`` fails (the JAX-only
quick start), ``<!-- not-run: reason -->`` skips it (say why). Other fences (```text, indented
shell commands) are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*(no-torch|not-run)\s*:\s*(\S.*?)\s*-->")
# Pages linked from here that are written on another branch; empty this once they are merged.
PENDING: set[str] = set()


def python_blocks(page: Path) -> list[tuple[int, str | None, str]]:
    """(line of the fence, marker or None, code) for every ```python block of ``page``."""
    lines = page.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            start = index
            marker = MARKER.search(lines[start - 1]) if start else None
            end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
            blocks.append((start + 1, marker.group(1) if marker else None, "\n".join(lines[start + 1 : end]) + "\n"))
            index = end
        index += 1
    return blocks


BLOCKS = [(page, line, marker, code) for page in PAGES for line, marker, code in python_blocks(page)]


@pytest.mark.parametrize(
    "page,line,marker,code", BLOCKS, ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in BLOCKS]
)
def test_block_runs(page, line, marker, code):
    where = f"{page.relative_to(ROOT)}:{line}"
    if marker == "not-run":
        pytest.skip(f"{where} is marked not-run")
    if marker == "no-torch":
        prologue = "import sys\nsys.modules['torch'] = None\n"
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", prologue + code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{where} failed without torch:\n{done.stderr[-4000:]}"
        return
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def test_readme_is_short_and_starts_with_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    commands = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith(("python3 ", ". .venv"))]
    assert len(commands) == 2
    head = readme.split("\n## ", 1)[0]
    assert all(f"    {command}\n" in head for command in commands), "the README's first commands must be .ci/run's"


def test_quick_start_needs_no_torch():
    markers = [marker for _, _, marker, _ in BLOCKS if marker == "no-torch"]
    assert markers, "the README's quick start must be marked no-torch, and so run without torch"


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            path = (page.parent / target).resolve()
            if not path.exists() and os.path.relpath(path, ROOT) not in PENDING:
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
