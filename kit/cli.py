"""The command registry and the options commands share, defined once.

A command is a module with `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. Command
modules are imported to build the parser, so they import only the standard library and `kit` at module
level; anything heavy (boto3, numpy, torch) is imported inside `run`. A name with a space is a verb of a
group: `"slides run": "kit.slides.run"` becomes `kit slides run`.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from model_code.catalogue import MODELS, canonical_name

if TYPE_CHECKING:
    import boto3

COMMANDS: dict[str, str] = {
    "package": "kit.artifacts.package",
    "verify": "kit.artifacts.verify",
    "upload": "kit.artifacts.upload",
    "preflight": "kit.deploy.preflight",
    "wait": "kit.deploy.wait",
    "smoke": "kit.endpoints.smoke",
    "plan": "kit.cohorts.plan",
    "batch": "kit.cohorts.batch",
    "demo": "kit.demo",
    "slides run": "kit.slides.run",
    "slides convert": "kit.slides.convert",
    "cohort run": "kit.cohorts.job_run",
    "cohort status": "kit.cohorts.job_status",
}


def parse_models(text: str) -> list[str]:
    """'h1, tissue-seg' -> catalogue names, aliases resolved, duplicates dropped, unknown names refused."""
    names = []
    for raw in text.split(","):
        name = canonical_name(raw.strip())
        if name is None:
            raise argparse.ArgumentTypeError(f"unknown model '{raw.strip()}' (known: {', '.join(MODELS)})")
        if name not in names:
            names.append(name)
    return names


def add_models(parser: argparse.ArgumentParser, *, required: bool, what: str) -> None:
    """--models: comma-separated catalogue names; an unknown one is a usage error naming the known ones."""
    parser.add_argument(
        "--models", type=parse_models, required=required, help=f"{what}, comma-separated: {', '.join(MODELS)}"
    )


def add_aws(parser: argparse.ArgumentParser) -> None:
    """--region and --profile, for every command that calls AWS."""
    group = parser.add_argument_group("AWS")
    group.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION, or the profile's)")
    group.add_argument("--profile", help="named profile from ~/.aws/config (default: AWS_PROFILE, or the default)")


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", type=Path, metavar="PATH", help=f"also write {what} as JSON to PATH")


def session(args: argparse.Namespace) -> boto3.Session:
    """The boto3 session the command's --region and --profile ask for."""
    import boto3

    return boto3.Session(region_name=args.region, profile_name=args.profile)


def write_output(path: Path | None, content: bytes) -> None:
    """Write a report to the PATH an option gave, if it gave one (parent directories made)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser of every registered command; each subparser's `run` default is its module's run."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = argparse.ArgumentParser(
        prog="python -m kit", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        *group, verb = name.split(" ")
        commands = top
        if group:
            if group[0] not in groups:
                group_parser = top.add_parser(group[0], help=f"{group[0]} commands")
                groups[group[0]] = group_parser.add_subparsers(dest="verb", required=True, metavar="VERB")
            commands = groups[group[0]]
        command = commands.add_parser(verb, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def command_table() -> str:
    """docs/operator-cli.md's table of commands, from the registry (tests/test_docs.py checks it is current)."""
    rows = [f"| `python -m kit {name}` | {importlib.import_module(module).HELP} |" for name, module in COMMANDS.items()]
    return "\n".join(["| command | what it does |", "|---|---|", *rows])
