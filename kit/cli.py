"""The command registry and the options commands share, defined once.

A command is a module with `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. Command
modules are imported to build the parser, so they import only the standard library and `kit` at module
level; anything heavy (boto3, numpy, torch) is imported inside `run`. A name with a space is a verb of a
group: `"slides run": "kit.slides.run"` becomes `kit slides run`.
"""

from __future__ import annotations

import argparse
import importlib
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from kit import KitError
from kit.errors import NO_CREDENTIALS, NO_REGION, USAGE
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
DESCRIPTION = (
    "The operator's commands of the Optimus SageMaker kit, from packaging a model artifact to deploying,\n"
    "checking and using its endpoints."
)
GROUPS = {
    "slides": "whole slides: `slides run` sends them to an endpoint, `slides convert` relays the outputs",
    "cohort": "cohorts in S3 as training jobs: `cohort run` starts one (reruns resume), `cohort status` follows it",
}
# One command line per command, shown under its --help (tests/test_cli.py checks each parses).
EXAMPLES = {
    "package": "python -m kit package --demo --models h1,tissue-seg --out build/demo/H1",
    "verify": "python -m kit verify build/demo/H1/model --json verify.json",
    "upload": "python -m kit upload build/demo/H1/model s3://ARTIFACT_BUCKET/h1/v1/",
    "preflight": "python -m kit preflight -c prefix=optimus-stage -c minInstances=1 --json preflight.json",
    "wait": "python -m kit wait --endpoint optimus-h1 --timeout 3600",
    "smoke": "python -m kit smoke --endpoint-url http://127.0.0.1:8080   # or --stack OptimusEndpoints",
    "plan": "python -m kit plan --slides 1000 --tiles-per-slide 20000 --price-per-hour 1.41",
    "batch": "python -m kit batch --endpoint h1 --input s3://RESULTS_BUCKET/optimus-h1/batch/input/run-1/",
    "demo": "python -m kit demo --workdir build/demo",
    "slides run": "python -m kit slides run slides/ --endpoint-url http://127.0.0.1:8080 --model h1 --out features/",
    "slides convert": "python -m kit slides convert features/ --to stamp --out stamp-features/",
    "cohort run": "python -m kit cohort run s3://BUCKET/slides/ --model h1 --artifact kit://h1/v1/ --instances 20 "
    "--spot --out s3://BUCKET/features/",
    "cohort status": "python -m kit cohort status cohort-h1-20260101-120000 --follow --price-per-hour 1.41",
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


def add_stack(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--stack: the endpoints stack whose outputs name the endpoints, buckets and roles (OPTIMUS_STACK sets the
    default, so that an operator of a second copy, `-c prefix=optimus-stage`, does not reach the first)."""
    import os

    default = os.environ.get("OPTIMUS_STACK", "OptimusEndpoints")
    parser.add_argument("--stack", default=default, help="the endpoints stack (default: OPTIMUS_STACK, or %(default)s)")


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", type=output_path, metavar="PATH", help=f"also write {what} as JSON to PATH")


def session(args: argparse.Namespace, default_region: str | None = None) -> boto3.Session:
    """The boto3 session the command's --region and --profile ask for, its region one that exists and its
    credentials found. Every command calls it after the checks that need no AWS, so a command refuses in one
    order: options, local files and values, then the profile, the region, the credentials."""
    import boto3

    aws = boto3.Session(region_name=args.region or None, profile_name=args.profile)  # refuses an unknown profile
    region = aws.region_name or default_region
    if region is None:
        raise KitError(NO_REGION)
    check_region(region)
    if aws.get_credentials() is None:
        raise KitError(NO_CREDENTIALS)
    return aws if aws.region_name else boto3.Session(region_name=region, profile_name=args.profile)


def check_region(region: str) -> None:
    """A region botocore knows in any partition; else the nearest names (a typo becomes no connection error)."""
    import difflib

    import botocore.session

    partitions = botocore.session.get_session().get_data("endpoints")["partitions"]
    known = [name for partition in partitions for name in partition["regions"]]
    if region not in known:
        near = difflib.get_close_matches(region, known, n=3)
        hint = f"did you mean {' or '.join(near)}?" if near else f"known: {', '.join(known)}"
        raise KitError(f"no AWS region '{region}': {hint} (--region, AWS_REGION or the profile's region)")


def positive(kind: type[int] | type[float], minimum: float = 1) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` of at least `minimum`, else a usage error saying so."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a{'' if kind is int else ' '}{kind.__name__}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} (got {text})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def endpoint_url(text: str) -> str:
    """An argparse type: http(s)://HOST[:PORT][/PATH], the scheme included (urllib and botocore need it)."""
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"'{text}' is not a URL: give http://HOST:PORT, e.g. http://{text}")
    try:
        parsed.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}': {exc}") from None
    return text.rstrip("/")


def output_path(text: str) -> Path:
    """An argparse type: a file to write, in a folder that exists (a typo in the folder is caught before the
    command runs, not by creating it)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder: give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} does not exist: create it, or write elsewhere")
    return path


def write_output(path: Path | None, content: bytes) -> None:
    """Write a report to the PATH an option gave, if it gave one (its folder was checked by output_path)."""
    if path is not None:
        path.write_bytes(content)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line naming the command's --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (`{self.prog} --help` for its options)\n")


def build_parser(description: str = DESCRIPTION) -> argparse.ArgumentParser:
    """The parser of every registered command; each subparser's `run` default is its module's run."""
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = Parser(
        prog="python -m kit",
        description=description,
        epilog="`python -m kit COMMAND --help` (`python -m kit slides run --help`): its options and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups: dict[str, argparse._SubParsersAction[Parser]] = {}
    top: argparse._SubParsersAction[Parser] = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        *group, verb = name.split(" ")
        commands = top
        if group:
            if group[0] not in groups:
                group_parser = top.add_parser(group[0], help=GROUPS[group[0]], description=GROUPS[group[0]])
                groups[group[0]] = group_parser.add_subparsers(
                    dest="verb", required=True, metavar="VERB", parser_class=Parser
                )
            commands = groups[group[0]]
        command = commands.add_parser(
            verb,
            help=module.HELP,
            description=module.HELP,
            epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def command_table() -> str:
    """docs/operator-cli.md's table of commands, from the registry (tests/test_docs.py checks it is current)."""
    rows = [f"| `python -m kit {name}` | {importlib.import_module(module).HELP} |" for name, module in COMMANDS.items()]
    return "\n".join(["| command | what it does |", "|---|---|", *rows])
