"""botocore's own service model as a check of the requests the kit makes (or CloudFormation makes for it):
ParamValidator for required members and types, and what it leaves to the service: enums, lengths, ranges
and patterns."""

from __future__ import annotations

from typing import Any

import botocore.session
import regex  # AWS's patterns use \p{...} classes, which `re` lacks (regex comes with cfn-lint)
from botocore.model import Shape
from botocore.validate import ParamValidator

SESSION = botocore.session.get_session()


def request_errors(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """Everything botocore's model of `service` says is wrong with this request, as lines."""
    shape = SESSION.get_service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    return ([report.generate_report()] if report.has_errors() else []) + constraint_errors(params, shape, operation)


def constraint_errors(value: Any, shape: Shape, path: str) -> list[str]:
    """What botocore's ParamValidator leaves to the service: enums, maximums and patterns."""
    errors = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in value.items():
            if name in shape.members:
                errors += constraint_errors(member, shape.members[name], f"{path}.{name}")
    elif shape.type_name == "list" and isinstance(value, list):
        errors += [e for i, v in enumerate(value) for e in constraint_errors(v, shape.member, f"{path}[{i}]")]
    elif shape.type_name == "map" and isinstance(value, dict):
        errors += [e for k, v in value.items() for e in constraint_errors(v, shape.value, f"{path}.{k}")]
    elif shape.type_name == "string" and isinstance(value, str):
        enum, pattern, most = shape.enum, shape.metadata.get("pattern"), shape.metadata.get("max")
        if enum and value not in enum:
            errors.append(f"{path}: {value!r} not one of {enum}")
        if most is not None and len(value) > most:
            errors.append(f"{path}: longer than {most}")
        if pattern and not _matches(pattern, value):
            errors.append(f"{path}: {value!r} does not match {pattern}")
    elif shape.type_name in ("integer", "long", "double", "float") and value > shape.metadata.get("max", value):
        errors.append(f"{path}: {value} over {shape.metadata['max']}")
    return errors


def _matches(pattern: str, value: str) -> bool:
    try:
        return regex.fullmatch(pattern, value, regex.DOTALL) is not None
    except regex.error:  # a Java-only construct (a few of AWS's patterns): not checkable here
        return True
