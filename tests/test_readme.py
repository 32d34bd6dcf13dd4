"""The README's Python example runs as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    small = namespace["small"]
    plan = namespace["plan"]
    data = namespace["data"]
    assert small(data.test.x).shape == (len(data.test), 10)
    assert sum(plan.kept) <= sum(plan.total)
