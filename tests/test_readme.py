"""The README's tour runs as written, and its Quickstart block holds exactly two commands."""

import pathlib
import re
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_tour_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    assert scope["samples"].shape == (512, 2) and np.all(np.isfinite(scope["nll"]))
    assert np.all(np.isfinite(scope["guided_samples"]))
    assert scope["net_samples"].shape == (64, 2) and np.all(np.isfinite(scope["net_samples"]))


def test_quickstart_has_two_commands():
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "quickstart.py"), "test"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pytest" in out.stdout
