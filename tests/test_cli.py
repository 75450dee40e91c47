"""The CLI's shape: commands that only call AWS start without torch, every command in the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kit.__main__ import main
from kit.cli import COMMANDS
from tests.support.cli import probe


@pytest.mark.parametrize(
    ("args", "status", "said"),
    [
        (["upload", "--help"], 0, ""),
        (["wait", "--help"], 0, ""),
        (["smoke", "--help"], 0, ""),
        (["smoke", "--endpoint", "x"], 2, "error: --endpoint needs --models"),
        (["smoke", "--endpoint", "x", "--models", "h42"], 2, "unknown model 'h42'"),
        (["wait", "--endpoint", "x"], 2, "error: no AWS region: pass --region or set AWS_REGION"),
        (["wait", "--endpoint", "x", "--region", "eu-west-1"], 2, "error: no AWS credentials found"),
        (
            ["smoke", "--stack", "S", "--region", "eu-west-1", "--profile", "nope"],
            2,
            "profile (nope) could not be found",
        ),
        (["upload", "missing.tar.gz", "s3://bucket/key"], 2, "error: missing.tar.gz does not exist"),
    ],
)
def test_aws_commands_start_without_torch(args: list[str], status: int, said: str, tmp_path: Path) -> None:
    result, stderr = probe(args, tmp_path)
    assert result == {"status": status, "heavy": []}, stderr
    assert said in stderr and "Traceback" not in stderr
    if status:
        assert len(stderr.strip().splitlines()) == 1 or stderr.startswith("usage:"), stderr


def test_top_level_help_lists_every_command_without_torch(tmp_path: Path) -> None:
    result, _ = probe(["--help"], tmp_path)
    assert result == {"status": 0, "heavy": []}


def test_every_command_has_one_line_help_and_shared_debug(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    for name in COMMANDS:
        *group, verb = name.split()
        if group:  # a verb of a group (`slides run`): the group in --help, the verb in the group's --help
            assert main([*group, "--help"]) == 0
            listing = capsys.readouterr().out
            assert re.search(rf"^\s+{group[0]}\s+\S", listed, re.MULTILINE), f"{group[0]} missing from --help"
        else:
            listing = listed
        assert re.search(rf"^\s+{verb}\s+\S", listing, re.MULTILINE), f"{name} missing from --help"
        assert main([*name.split(), "--help"]) == 0
        assert "--debug" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["batch"], ["cohort", "run"], ["slides", "run"]])
def test_the_endpoints_stack_defaults_to_optimus_stack(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second copy's operator (`-c prefix=optimus-stage`) sets OPTIMUS_STACK once instead of reaching the first."""
    monkeypatch.setenv("OPTIMUS_STACK", "OptimusStageEndpoints")
    assert main([*command, "--help"]) == 0
    assert "OPTIMUS_STACK, or OptimusStageEndpoints" in " ".join(capsys.readouterr().out.split())
