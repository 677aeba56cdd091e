"""The README's promises that code can check: its ISDA snippet runs as printed, and the commands
and pages it names exist."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

README = (ROOT / "README.md").read_text()
# what neither the README nor a docs page may hold: a machine's path or an issue number
PRIVATE = re.compile(r"/work/|/tmp/[a-z]|/home/|[Ii]ssue [0-9]+")


def relative_links(text: str) -> set[str]:
    """Targets of Markdown links that are files of the repository (no URL, no #anchor)."""
    return set(re.findall(r"\]\(((?!https?:|mailto:)[^)#\s]+)", text))


def section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_the_isda_snippet_runs_and_its_checkpoint_holds_the_statistics(tmp_path):
    (code,) = re.findall(r"```python\n(.*?)```", section("Use the ISDA loss in your own training loop"), re.S)
    check = code + (
        "\nckpt = torch.load('checkpoint.pt', weights_only=True)\n"
        "assert int(ckpt['isda']['counts'].sum()) == 3 * 256, ckpt['isda']['counts']\n"
        "assert ckpt['isda']['covariances'].shape == (10, 32, 32)\n"
        "assert torch.isfinite(loss) and 0 <= accuracy <= 1\n"
        "print('ok', float(loss))\n")
    proc = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_the_linked_pages_and_files_exist():
    links = relative_links(README)
    assert links, "no relative links found"
    missing = sorted(link for link in links if not (ROOT / link).exists())
    assert not missing, missing


def test_the_readme_is_short_and_names_no_machine_path_or_issue():
    assert len(README.splitlines()) <= 250
    assert not PRIVATE.search(README)


def test_the_docs_name_no_machine_path_or_issue_and_their_links_resolve():
    pages = sorted((ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 10
    for page in pages:
        text = page.read_text()
        assert not PRIVATE.search(text), page.name
        for link in relative_links(text):
            assert (page.parent / link).exists(), (page.name, link)
