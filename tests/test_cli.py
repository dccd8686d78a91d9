from __future__ import annotations

import subprocess
import sys

import pytest

from coalora.cli import _parser, main

COMMANDS = sorted(_parser()[1])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 100


def test_user_mistake_is_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "coalora", "eval", "--model", "no-such-model"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown model 'no-such-model'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--windows", "--seqlen", "--batch-size"])
def test_non_positive_numbers_are_rejected(flag, capsys):
    assert main(["eval", "--model", "tiny-llama", flag, "0"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "tiny-llama" in out
