"""The README's example runs as written."""

import re
from pathlib import Path


def test_readme_examples_run():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 4
    scope = {}
    for code in blocks:  # in order, one scope: the later blocks use the first one's imports
        exec(compile(code, "README.md", "exec"), scope)
    assert scope["trim"].epoch == 10 and scope["total"].isfinite()
    assert scope["loss"].isfinite() and scope["W"].grad.shape == (32000, 64)
    assert scope["step_loss"].isfinite() and scope["net"][0].weight.grad is None  # zero_grad after the step
    assert scope["out"].logits is None and scope["model"].lm_head.weight.grad is not None
