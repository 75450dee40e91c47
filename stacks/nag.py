"""cdk-nag acknowledgements: every one names the construct it is on and a reason a reviewer accepts."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(*args: IConstruct | str, reason: str) -> None:
    """acknowledge(construct..., rule_id..., reason=...): the rules on each construct, with the reason."""
    constructs = [a for a in args if not isinstance(a, str)]
    rules = [Acknowledgment(id=_qualified(a), reason=reason) for a in args if isinstance(a, str)]
    for construct in constructs:
        Validations.of(construct).acknowledge(*rules)


def _qualified(rule: str) -> str:
    """'AwsSolutions-S1' -> 'AwsSolutions::AwsSolutions-S1': the pack prefix cdk-nag's findings carry."""
    pack = rule.split("-", 1)[0]
    return rule if "::" in rule else f"{pack}::{rule}"
