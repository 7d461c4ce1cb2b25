"""The repository is self-contained: no file points at documents outside it (a clone or a
wheel has nothing beside it), and every relative Markdown link resolves."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Documents that live outside the repository; the project carries its own in docs/.
OUTSIDE = re.compile(r"\.\./shared|\bSPEC\.md|BUILD_NOTES\.md|METHOD\.md|GPU_REVIEW\.md|HOPPER\.md")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _tracked():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out.splitlines() if not f.startswith("benchmarks/results/")]


def _text(path: Path):
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
        return None


def test_no_reference_outside_the_repository():
    bad = []
    for path in _tracked():
        text = _text(path)
        if text is None or path.name == "test_repo_docs.py":
            continue
        bad += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                if OUTSIDE.search(line)]
    assert not bad, "\n".join(bad)


def test_markdown_links_resolve():
    bad = []
    for path in _tracked():
        if path.suffix != ".md":
            continue
        for target in LINK.findall(_text(path) or ""):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            if not (path.parent / target).exists():
                bad.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not bad, "\n".join(bad)
