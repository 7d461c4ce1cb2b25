"""The README's example runs as written."""

import re
from pathlib import Path


def test_readme_examples_run():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    scope = {}
    for code in blocks:  # in order, one scope: the LM-head block uses the first one's import
        exec(compile(code, "README.md", "exec"), scope)
    assert scope["trim"].epoch == 10 and scope["total"].isfinite()
    assert scope["loss"].isfinite() and scope["W"].grad.shape == (32000, 64)
