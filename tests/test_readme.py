"""The README's promises: exactly two setup commands, and its Python tour runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_has_exactly_the_two_commands_and_ci_calls_the_test_one():
    shell_blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    assert shell_blocks[:2] == ["make demo\n", "make test\n"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_python_tour_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    exec(compile(code, "README.md", "exec"), {})
    words = capsys.readouterr().out.split()
    assert words[0] == "accuracy" and words[2] == "PSNR" and words[4] == "dB"
    assert float(words[1]) > 0.8  # NNM + trimmed mean keeps FedAvg learning under 4 ALIE clients
    assert 0.0 < float(words[3]) < 60.0
