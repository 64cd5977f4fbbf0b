"""Every Python snippet in the README runs as written; the README's cost table is cost.py's output."""
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_commands():
    head = README[:2500]
    assert "make lab" in head and "make test" in head


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_python_snippet_runs(i, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    exec(compile(SNIPPETS[i], f"README.md snippet {i}", "exec"), {"__name__": "__readme__"})


def test_cost_table_is_generated_by_cost_py():
    from msa_lab import cost

    table = cost.readme_table()
    assert table.strip() in README, "README cost table is stale: paste msa_lab.cost.readme_table() output"
