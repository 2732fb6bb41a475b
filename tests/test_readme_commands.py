"""The README's commands, as written: the set-up's training (with a short budget) and the commands after it."""

from __future__ import annotations

import glob
import re
import shlex

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def bash_blocks(after_heading: str) -> list[list[str]]:
    """The command lines of each ```bash block in the section under ``after_heading``."""
    section = README.split(after_heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [[line.split("#")[0].strip() for line in b.splitlines() if line.split("#")[0].strip()] for b in blocks]


def expand(line: str) -> list[str]:
    """A command line's words, with globs expanded as a shell would (sorted; unmatched left as written)."""
    words = []
    for word in shlex.split(line):
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        words += matches or [word]
    return words


@pytest.mark.slow
def test_readme_setup_and_next_commands_run_as_written(cli, tmp_path, monkeypatch):
    setup, after = bash_blocks("## Set-up")
    assert setup == ['pip install torch==2.13.0 -e ".[test]" && sfspec train specs/cartpole.yaml', "python -m pytest"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "specs").symlink_to(ROOT / "specs")
    train = shlex.split(setup[0].split("&&")[1])
    assert train == ["sfspec", "train", "specs/cartpole.yaml"]
    for _ in range(2):  # two runs, so the globs below match several (the full budget takes a minute: cut short)
        result = cli(*train[1:], "--set", "train.steps=512", "-q")
        assert result.code == 0, result.err
        assert re.search(r"next: sfspec eval runs/cartpole-\S+ {2}\| {2}sfspec plot", result.out)
    runs = sorted(glob.glob("runs/cartpole-*"))
    assert len(runs) == 2
    for line in after:
        words = expand(line)
        assert words[0] == "sfspec", line
        result = cli(*words[1:])
        assert result.code == 0, (line, result.err)
        if words[1] == "eval":
            assert [out.split(":")[0] for out in result.out.splitlines()] == runs
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    assert all((tmp_path / run / "bundle" / "policy.onnx").is_file() for run in runs)
