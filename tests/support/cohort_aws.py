"""A deployed kit in moto: the foundation and endpoints stacks' outputs as the stacks write them (with
literal values), the results and artifact buckets, the model, the async topics and the cohort-job role's
outputs; shared by the batch, runner and cohort-job tests."""

from __future__ import annotations

import json

import boto3

REGION, ACCOUNT = "eu-west-1", "123456789012"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0a1b2c3d-1111-2222-3333-444455556666"
BUCKET = "optimus-results-test"
ARTIFACTS = "optimus-artifacts-test"
SLIDES = "optimus-slides-test"  # a customer's bucket of slides; the cohort-job role reads its cohorts/ prefix
JOB_ROLE = f"arn:aws:iam::{ACCOUNT}:role/optimus-cohort-job"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/optimus:1"


def _stack(outputs: dict[str, str]) -> str:
    return json.dumps(
        {
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {k: {"Value": v} for k, v in outputs.items()},
        }
    )


def deploy(session: boto3.Session) -> None:
    """optimus-h1 (real-time) and optimus-h1-slides (async), as `cdk deploy` would leave them."""
    for bucket in (BUCKET, ARTIFACTS, SLIDES):
        session.client("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    sns = session.client("sns")
    topics = {o: sns.create_topic(Name=f"slides-{o}")["TopicArn"] for o in ("success", "error")}
    sagemaker = session.client("sagemaker")
    role = f"arn:aws:iam::{ACCOUNT}:role/optimus-h1-role"
    for model in ("H1Model-abc", "H1SlidesModel-def"):
        sagemaker.create_model(
            ModelName=model,
            ExecutionRoleArn=role,
            PrimaryContainer={"Image": IMAGE},
            EnableNetworkIsolation=True,
        )
    cloudformation = session.client("cloudformation")
    cloudformation.create_stack(
        StackName="OptimusFoundation",
        TemplateBody=_stack(
            {
                "ResultsBucket": BUCKET,
                "ArtifactBucket": ARTIFACTS,
                "KeyArn": KEY_ARN,
                "CohortJobOutput": f"s3://{BUCKET}/cohorts/",
            }
        ),
    )
    outputs = {
        "FoundationStack": "OptimusFoundation",
        "CohortJobRoleArn": JOB_ROLE,
        "CohortJobImageUri": IMAGE,
        "CohortJobInputs": f"s3://{SLIDES}/cohorts/,s3://{SLIDES}/more/",
    }
    for title, name, model, serving in (
        ("H1", "optimus-h1", "H1Model-abc", "real-time"),
        ("H1Slides", "optimus-h1-slides", "H1SlidesModel-def", "async"),
    ):
        outputs |= {
            f"{title}EndpointName": name, f"{title}Models": "h1,tissue-seg", f"{title}ModelName": model,
            f"{title}ExecutionRoleArn": role, f"{title}Serving": serving,
            f"{title}BatchInput": f"{name}/batch/input/", f"{title}BatchOutput": f"{name}/batch/output/",
        }  # fmt: skip
    outputs |= {
        "H1SlidesAsyncInput": "optimus-h1-slides/async/input/",
        "H1SlidesAsyncOutput": "optimus-h1-slides/async/output/",
        "H1SlidesAsyncFailures": "optimus-h1-slides/async/failures/",
        "H1SlidesAsyncSuccessTopic": topics["success"],
        "H1SlidesAsyncErrorTopic": topics["error"],
    }
    cloudformation.create_stack(StackName="OptimusEndpoints", TemplateBody=_stack(outputs))
