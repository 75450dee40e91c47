"""The documentation stays true: links resolve, the commands it gives exist, tables follow the code."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import App

from app import build
from kit.artifacts.builder import package
from kit.cli import build_parser, command_table
from stacks import diagram

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def _code_free(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_code_free(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert broken == [], f"{page.name}: {broken}"


def test_docs_pages_are_linked_from_the_front_page() -> None:
    readme = (REPO / "README.md").read_text()
    unlinked = [page.name for page in PAGES[1:] if f"(docs/{page.name})" not in readme]
    assert unlinked == [], "README's documentation table leaves out these pages"


def test_every_kit_command_line_in_the_docs_parses() -> None:
    """Every `.venv/bin/python -m kit ...` line in README.md and docs/ names a command that exists, with options
    its parser accepts as written."""
    examples = []
    for page in PAGES:
        text = page.read_text().replace("\\\n", " ")
        examples += [(page.name, line) for line in re.findall(r"^\.venv/bin/python -m kit ([^\n#]*)", text, re.M)]
    assert len(examples) >= 10
    parser = build_parser()
    for page, example in examples:
        try:
            args = parser.parse_args(shlex.split(example))
        except SystemExit:
            pytest.fail(f"{page}: `python -m kit {example}` is refused by the CLI's parser")
        assert args.run.__module__.startswith("kit."), example


def test_command_table_is_current() -> None:
    page = (REPO / "docs" / "operator-cli.md").read_text()
    block = re.search(r"<!-- commands:[^>]*-->\n(.*?)\n<!-- /commands -->", page, re.DOTALL)
    assert block is not None, "docs/operator-cli.md has no <!-- commands --> block"
    assert block.group(1) == command_table(), f"the command table is stale; it should read:\n{command_table()}"


def test_architecture_diagram_matches_the_templates(tmp_path: Path) -> None:
    """docs/architecture.md's diagram is what `make synth` gives for cdk.json's context (artifacts built here:
    their paths change asset hashes only, which the diagram leaves out)."""
    context = json.loads((REPO / "cdk.json").read_text())["context"]
    for name, entry in context["endpoints"].items():
        package(entry["models"], tmp_path / name, demo=True)
        entry["artifact"] = str(tmp_path / name)
    app = App(context=context, outdir=str(tmp_path / "cdk.out"))
    build(app)
    app.synth()
    drawn = diagram.block(diagram.read_templates(tmp_path / "cdk.out"))
    committed = (REPO / "docs" / "architecture.md").read_text()
    assert drawn in committed, "docs/architecture.md is stale: run `make synth` (it redraws the diagram)"
