"""The operator's first hour: what a person meets when a command is given a typo, no AWS, a local server,
or `--help` (each test checks the message or behaviour a user sees, through the CLI as it is run)."""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from kit.__main__ import main
from kit.cli import COMMANDS, EXAMPLES, GROUPS, build_parser
from kit.progress import PlainLines
from tests.support.cli import probe
from tests.support.paths import REPO
from tests.support.serving import Running


def refused(args: list[str], tmp_path: Path, said: str, status: int = 2) -> str:
    """Run the CLI with no AWS configuration; it exits `status` with one line containing `said`, no torch."""
    result, stderr = probe(args, tmp_path)
    assert result == {"status": status, "heavy": []}, stderr
    assert said in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    return stderr


# --- local use without AWS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [[], ["--endpoint", "optimus-h1", "--models", "h1,tissue-seg"]],  # the second: README's own example
    ids=["models-from-ping", "readme-example"],
)
def test_local_smoke_needs_no_region_credentials_or_endpoint_name(
    running: Running, tmp_path: Path, extra: list[str]
) -> None:
    result, stderr = probe(["smoke", "--endpoint-url", running.url, "--requests", "2", *extra], tmp_path)
    assert result == {"status": 0, "heavy": []}, stderr


def test_local_smoke_checks_the_models_ping_lists(running: Running, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", "--endpoint-url", running.url, "--requests", "2"]) == 0
    out = capsys.readouterr().out
    for model in running.server.models.runners:  # type: ignore[union-attr]
        assert re.search(rf"^ok\s+local {re.escape(model)}\s+metadata", out, re.MULTILINE), out


def test_local_smoke_of_no_server_says_so(tmp_path: Path) -> None:
    refused(["smoke", "--endpoint-url", "http://127.0.0.1:9"], tmp_path, "is the server running there?", status=1)


def test_smoke_without_credentials_is_one_line_exit_2(tmp_path: Path) -> None:
    for args in (["--stack", "S"], ["--endpoint", "optimus-h1", "--models", "h1"]):
        refused(["smoke", *args, "--region", "eu-west-1"], tmp_path, "error: no AWS credentials found")


# --- tracebacks and exit codes ---------------------------------------------------------------------------------


def test_missing_and_in_the_way_files_are_one_line(tmp_path: Path) -> None:
    refused(
        ["plan", "--cohort", "/nonexistent.csv", "--tiles-per-slide", "9"],
        tmp_path,
        "/nonexistent.csv: no such cohort CSV",
    )
    slide, taken = tmp_path / "a.svs", tmp_path / "taken"
    slide.write_bytes(b"II*\x00")
    taken.write_text("a file where the output folder should go")
    refused(
        ["slides", "run", str(slide), "--endpoint-url", "http://127.0.0.1:9", "--model", "h1", "--out", str(taken)],
        tmp_path,
        f"--out {taken}: is a file",
    )


@pytest.mark.parametrize("command", [["smoke"], ["slides", "run", "x.svs", "--model", "h1", "--out", "o"]])
def test_a_url_without_a_scheme_is_a_usage_error(command: list[str], tmp_path: Path) -> None:
    refused([*command, "--endpoint-url", "127.0.0.1:18901"], tmp_path, "give http://HOST:PORT, e.g. http://127.0.0.1")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["slides", "run", "missing.svs", "--endpoint", "h1-slides", "--model", "h1", "--out", "o"], "missing.svs: no"),
        (["slides", "run", "s3:/bad/uri", "--endpoint", "h1-slides", "--model", "h1", "--out", "o"], "s3:/bad/uri: no"),
        (["slides", "run", "a.svs", "--endpoint", "h1-slides", "--out", "o", "--model", "h42"], "not a slide model"),
        (["upload", "README.md", "s3:/bad/uri"], "'s3:/bad/uri' is not s3://BUCKET/KEY"),
        (["batch", "--endpoint", "h1", "--input", "s3:/bad/uri"], "'s3:/bad/uri' is not s3://BUCKET/PREFIX/"),
        (
            ["batch", "--endpoint", "h1", "--input", "s3://My_Bucket/in/"],
            "--input 's3://My_Bucket/in/' is not s3://BUCKET/PREFIX/: 'My_Bucket' is not an S3 bucket name",
        ),
        (
            ["slides", "convert", "s3://lab/features", "--to", "stamp", "--out", "s3://lab..x/stamp"],
            "--out 's3://lab..x/stamp' is not s3://BUCKET/PREFIX: 'lab..x' is not an S3 bucket name",
        ),
        (["upload", "README.md", "s3://bucket/"], "'s3://bucket/' is not s3://BUCKET/KEY: it names no key"),
        (["batch", "--endpoint", "h1", "--input", "s3://b/k/", "--max-concurrent", "50"], "is over 100"),
    ],
)
def test_checks_that_need_no_aws_come_before_the_credentials(args: list[str], said: str, tmp_path: Path) -> None:
    """No credentials here, and a region given: every command names the local problem first."""
    refused([*args, "--region", "eu-west-1"], tmp_path, said)


@pytest.mark.parametrize("command", [["wait", "--endpoint", "x"], ["smoke", "--stack", "S"]])
def test_a_region_that_does_not_exist_is_named(command: list[str], tmp_path: Path) -> None:
    refused([*command, "--region", "eu-wset-1"], tmp_path, "no AWS region 'eu-wset-1': did you mean eu-west-1")


def test_upload_refuses_what_is_not_an_artifact_or_a_bucket(tmp_path: Path) -> None:
    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"II*\x00" + bytes(64))
    refused(["upload", str(slide), "s3://bucket/k"], tmp_path, "is not a model artifact: give OUT/model or")
    fake = tmp_path / "model.tar.gz"
    fake.write_bytes(b"not gzip")
    refused(["upload", str(fake), "s3://bucket/k"], tmp_path, "is not a model artifact")
    refused(["upload", str(fake), "s3://My_Bucket/k"], tmp_path, "'My_Bucket' is not an S3 bucket name")
    refused(["upload", str(fake), "s3://192.168.1.1/k"], tmp_path, "not an IP address")


def test_the_package_directory_is_named_as_the_fix(tmp_path: Path) -> None:
    package = tmp_path / "H1"
    (package / "model").mkdir(parents=True)
    (package / "model" / "manifest.json").write_text("{}")
    for command in (["upload", str(package), "s3://bucket/h1/"], ["verify", str(package)]):
        refused(command, tmp_path, f"has no manifest.json: did you mean {package / 'model'}?")


def test_verify_of_nothing_fails_before_torch(tmp_path: Path) -> None:
    refused(["verify", "/nonexistent"], tmp_path, "/nonexistent does not exist")  # `refused`: torch not imported


@pytest.mark.parametrize(
    ("pair", "said"),
    [
        ('endpoints={"h1": {"models"', "endpoints: not valid JSON: Expecting ':' delimiter at character 16"),
        ("minInstances", "-c 'minInstances': give KEY=VALUE"),
        ("minInstances=x", "minInstances (from -c): Input should be a valid integer"),
    ],
)
def test_preflight_context_errors_name_the_problem_and_its_source(
    pair: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preflight", "-c", pair]) == 2
    assert said in capsys.readouterr().err


# --- small ones ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["smoke", "--endpoint-url", "http://127.0.0.1:9", "--requests", "0"], "--requests: must be at least 2"),
        (["wait", "--endpoint", "x", "--timeout", "-5"], "--timeout: must be at least 0 (got -5)"),
        (["wait", "--endpoint", "x", "--poll", "soon"], "--poll: 'soon' is not a float"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(args: list[str], said: str, tmp_path: Path) -> None:
    stderr = refused(args, tmp_path, said)
    assert f"`python -m kit {args[0]} --help`" in stderr


def test_json_into_a_missing_folder_is_refused_before_the_command_runs(tmp_path: Path) -> None:
    target = tmp_path / "typo" / "deeper" / "smoke.json"
    refused(["smoke", "--endpoint-url", "http://127.0.0.1:9", "--json", str(target)], tmp_path, "does not exist")
    assert not (tmp_path / "typo").exists()


def test_progress_is_plain_lines_when_not_a_terminal() -> None:
    from tqdm import tqdm

    log = io.StringIO()
    with tqdm(range(3), file=PlainLines(log, interval_s=3600), ncols=80, mininterval=0) as bar:
        for _ in bar:
            pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 2 and lines[0].startswith("0%") and lines[-1].startswith("100%") and "3/3" in lines[-1]


# --- help ------------------------------------------------------------------------------------------------------


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    """(command line, parser) for the top level, each group and each command."""
    found = []

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for verb, sub in action.choices.items():
                    walk(f"{name} {verb}".strip(), sub)

    walk("", build_parser())
    return found


def test_every_option_of_every_command_has_help_text() -> None:
    bare = re.compile(r"^\W*(default\W*)?%\(default\)s\W*$")
    for name, parser in every_parser():
        assert parser.description, f"`python -m kit {name} --help` has no description"
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            label = "/".join(action.option_strings) or action.dest
            assert action.help and not bare.match(action.help), f"{name} {label}: no help beyond its default"


def test_top_level_help_lists_every_command_and_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for name in [*(n for n in COMMANDS if " " not in n), *GROUPS]:
        assert re.search(rf"^\s+{name}\s+\S", listing, re.MULTILINE), f"{name} missing from `python -m kit --help`"
    assert "python -m kit slides run --help" in listing


def test_every_command_shows_an_example_that_parses(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert set(EXAMPLES) == set(COMMANDS)
    for name, example in EXAMPLES.items():
        assert main([*name.split(), "--help"]) == 0
        assert f"example:\n  {example}" in capsys.readouterr().out
        args = parser.parse_args(shlex.split(example.split("#")[0])[3:])
        assert args.run.__module__ == COMMANDS[name], example


def test_slides_run_help_lists_models_options_and_the_cohort_csv() -> None:
    from model_code.slides.options import SlideOptions

    (run,) = [parser for name, parser in every_parser() if name == "slides run"]
    helps = {action.dest: action.help or "" for action in run._actions}
    assert helps["model"].startswith("h1, h0, h0-mini, m-optimus:")  # the slide models; tissue-seg finds tissue
    others = [name for name in SlideOptions.model_fields if name not in ("model", "format", "dtype", "layout")]
    assert "slide_name" in others and all(name in helps["option"] for name in others)
    assert all(column in helps["cohort"] for column in ("`slide`", "`slide_id`", "`bulk_rna`", "`tiles`"))
    args = ["slides", "run", "s.svs", "--endpoint-url", "http://h:1", "--out", "o"]
    assert build_parser().parse_args([*args, "--model", "m-optimus-stx"]).model == "m-optimus"  # aliases resolved
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--model", "tissue-seg"])


def test_docs_name_the_commands_that_take_json() -> None:
    taking = sorted(
        name for name, parser in every_parser() if name and any("--json" in a.option_strings for a in parser._actions)
    )
    page = (REPO / "docs" / "operator-cli.md").read_text().replace("\n", " ")
    claimed = re.search(r"`--json PATH` \(([^)]*)\)", page)
    assert claimed is not None, "docs/operator-cli.md should say which commands take --json PATH"
    assert sorted(re.findall(r"`([a-z ]+)`", claimed.group(1))) == taking, taking


def test_reports_are_json(running: Running, tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    assert main(["smoke", "--endpoint-url", running.url, "--requests", "2", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["passed"] is True
