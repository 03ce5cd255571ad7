"""Print one command of the README's Quickstart block: `install` (the first) or `test` (the
second)."""

import pathlib
import re
import sys

text = pathlib.Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
section = text.split("## Quickstart", 1)[1]
block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
if len(commands) != 2:
    sys.exit(f"the Quickstart block must hold exactly two commands; found {len(commands)}")
print(commands[{"install": 0, "test": 1}[sys.argv[1]]])
