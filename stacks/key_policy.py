"""The KMS key-policy statements the kit's key needs: the kit adds them to a key it creates; a key brought with
`kmsKeyArn` must already hold them (the CDK cannot change an imported key's policy), so `app.py` prints them and
`python -m kit preflight` checks them. Each carries its confused-deputy condition."""

from __future__ import annotations

from typing import Any

from stacks import names
from stacks.config import KitConfig


def partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    return "aws-us-gov" if region.startswith("us-gov-") else "aws"


def log_group_pattern(config: KitConfig) -> str:
    """Where SageMaker writes the kit's endpoint logs (the log groups are /aws/sagemaker/Endpoints/ENDPOINT)."""
    return names.log_group(names.endpoint_name(config.prefix, "*"))


def alarm_pattern(config: KitConfig) -> str:
    """Every alarm of the kit is named ENDPOINT-WHAT, and every endpoint PREFIX-NAME."""
    return f"{config.prefix}-*"


def key_policy_statements(config: KitConfig, account: str, region: str) -> list[dict[str, Any]]:
    """The statements as JSON, for this account and region."""
    partition = partition_of(region)
    alarms = f"arn:{partition}:cloudwatch:{region}:{account}:alarm:{alarm_pattern(config)}"
    return [
        {
            "Sid": "AllowIamPolicies",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
            "Action": "kms:*",
            "Resource": "*",
        },
        {
            "Sid": "EndpointLogGroups",
            "Effect": "Allow",
            "Principal": {"Service": f"logs.{region}.amazonaws.com"},
            "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            "Resource": "*",
            "Condition": {
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": (
                        f"arn:{partition}:logs:{region}:{account}:log-group:{log_group_pattern(config)}"
                    )
                }
            },
        },
        {
            "Sid": "AlarmsToEncryptedTopic",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account},
                "ArnLike": {"aws:SourceArn": alarms},
            },
        },
    ]
