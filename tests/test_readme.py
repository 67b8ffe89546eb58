"""The README's two set-up commands stay in step with .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_demo_and_the_test_command():
    demo, tests = readme_commands()[:2]
    assert demo.endswith("gpustats demo")
    assert "pip install -q torch==2.13.0 -e . " in demo  # the demo needs only the core install
    assert tests.endswith(".venv/bin/python -m pytest -q -n auto")  # pytest-xdist: one worker per CPU


def test_ci_runs_the_readme_test_command():
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    for step in readme_commands()[1].split(" && "):
        assert step in ci_lines, f"{step!r} of the README's test command is not in .ci/run"
