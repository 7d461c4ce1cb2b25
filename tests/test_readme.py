"""The README's example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["trim"].epoch == 10 and scope["total"].isfinite()
