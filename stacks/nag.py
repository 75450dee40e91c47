"""cdk-nag acknowledgements and checkov skips: every one names the construct it is on and a reason a reviewer
accepts."""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnResource, Validations
from constructs import IConstruct


def acknowledge(*args: IConstruct | str, reason: str) -> None:
    """acknowledge(construct..., rule_id..., reason=...): the rules on each construct, with the reason."""
    constructs = [a for a in args if not isinstance(a, str)]
    rules = [Acknowledgment(id=_qualified(a), reason=reason) for a in args if isinstance(a, str)]
    for construct in constructs:
        Validations.of(construct).acknowledge(*rules)


def checkov_skip(construct: IConstruct, check: str, *, reason: str) -> None:
    """A checkov finding on the construct's CloudFormation resource, skipped with the reason (in its Metadata,
    where checkov reads skips)."""
    resource = construct.node.default_child
    assert isinstance(resource, CfnResource)
    resource.add_metadata("checkov", {"skip": [{"id": check, "comment": reason}]})


def _qualified(rule: str) -> str:
    """'AwsSolutions-S1' -> 'AwsSolutions::AwsSolutions-S1': the pack prefix cdk-nag's findings carry."""
    pack = rule.split("-", 1)[0]
    return rule if "::" in rule else f"{pack}::{rule}"


def nag_resource(resolved: object) -> str:
    """A resource as cdk-nag writes it in a finding: Fn::Join flattened, a Ref in <>, an import by its name."""
    if isinstance(resolved, str):
        return resolved
    if isinstance(resolved, dict) and "Fn::Join" in resolved:
        separator, parts = resolved["Fn::Join"]
        return separator.join(nag_resource(part) for part in parts)
    if isinstance(resolved, dict) and "Ref" in resolved:
        return f"<{resolved['Ref']}>"
    if isinstance(resolved, dict) and "Fn::ImportValue" in resolved:
        return str(resolved["Fn::ImportValue"])
    raise ValueError(f"cannot name {resolved!r} as cdk-nag does")
