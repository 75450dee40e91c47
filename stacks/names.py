"""What the stacks and the kit agree on: names, the stack outputs the kit reads, and shared defaults.

No CDK imports, so the kit's AWS commands (which start without aws-cdk-lib or torch) read it too; a test
checks that every output the kit reads is one the stacks write.
"""

from __future__ import annotations

DEFAULT_INSTANCE_TYPE = "ml.g5.xlarge"
VARIANT = "AllTraffic"  # the one production variant of every endpoint config

# Outputs of the endpoints stack, one set per endpoint entry, each key prefixed by the entry's title().
ENDPOINT_NAME = "EndpointName"
MODELS = "Models"
MODEL_NAME = "ModelName"
ROLE_ARN = "ExecutionRoleArn"
SERVING = "Serving"  # "async" or "real-time"
PREFIXES = ("BatchInput", "BatchOutput", "AsyncInput", "AsyncOutput", "AsyncFailures")  # in the results bucket
TOPICS = ("AsyncSuccessTopic", "AsyncErrorTopic")  # async endpoints only
FOUNDATION_STACK = "FoundationStack"  # the endpoints stack's output naming its foundation stack
# Outputs of the endpoints stack for cohort training jobs (with the cohortJobs context key).
COHORT_JOB_ROLE_ARN = "CohortJobRoleArn"
COHORT_JOB_IMAGE_URI = "CohortJobImageUri"
COHORT_JOB_INPUTS = "CohortJobInputs"  # comma-separated s3:// prefixes
# Outputs of the foundation stack.
RESULTS_BUCKET = "ResultsBucket"
ARTIFACT_BUCKET = "ArtifactBucket"
KEY_ARN = "KeyArn"
COHORT_JOB_OUTPUT = "CohortJobOutput"


def title(name: str) -> str:
    """An endpoint entry's (or prefix's) CamelCase, as construct ids and output keys use it: h1-slides -> H1Slides."""
    return "".join(part.capitalize() for part in name.split("-"))


def endpoint_name(prefix: str, entry: str) -> str:
    """The SageMaker endpoint of an endpoint entry: optimus-h1."""
    return f"{prefix}-{entry}"


def log_group(endpoint: str) -> str:
    """Where SageMaker writes an endpoint's logs (a pattern with endpoint="optimus-*")."""
    return f"/aws/sagemaker/Endpoints/{endpoint}"
