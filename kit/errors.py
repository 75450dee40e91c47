"""Every error a command can meet, as one line naming what to do and an exit status.

2: usage and configuration (a bad option, a file that is missing or in the way, no credentials or region, a
stack or endpoint that does not exist, access denied); 1: a check that failed (an artifact, an endpoint, an
upload). Anything else is a bug in the kit and keeps its traceback.
"""

from __future__ import annotations

from kit import CheckFailed, KitError
from kit.s3 import is_not_found
from model_code.errors import ArtifactError

USAGE, FAILED = 2, 1
# A path the operator gave that is missing, in the way or not theirs to use: wherever it is met, one line.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
AWS_MODULES = ("botocore", "boto3", "s3transfer")
DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
}
CREDENTIALS_HINT = "pass --profile, set AWS_PROFILE, or log in (`aws sso login` / `aws configure`)"
NO_REGION = "no AWS region: pass --region or set AWS_REGION"
NO_CREDENTIALS = f"no AWS credentials found: {CREDENTIALS_HINT}"


def explain(exc: BaseException) -> tuple[str, int] | None:
    """(one line, exit status) for an error the operator can act on; None for a bug."""
    if isinstance(exc, CheckFailed | ArtifactError):
        return str(exc), FAILED
    if isinstance(exc, KitError):
        return str(exc), USAGE
    if isinstance(exc, PATH_ERRORS) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}", USAGE
    if type(exc).__module__.split(".")[0] in AWS_MODULES:
        return _aws(exc)
    return None


def _aws(exc: BaseException) -> tuple[str, int]:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if isinstance(exc, NoRegionError):
        return NO_REGION, USAGE
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return NO_CREDENTIALS, USAGE
    if isinstance(exc, ProfileNotFound):
        return f"{exc}: pass a profile from ~/.aws/config, or none", USAGE
    if isinstance(exc, EndpointConnectionError):
        return f"{exc}: check --region and the network", FAILED
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", ""), error.get("Message", str(exc))
        said = f"{exc.operation_name}: {message} ({code})"
        if code in DENIED:
            return f"{said}: these credentials may not do this; {CREDENTIALS_HINT} with a role that may", USAGE
        if "does not exist" in message or "Could not find" in message or code.startswith("NoSuch") or is_not_found(exc):
            return f"{said}: check the name and --region", USAGE
        return said, FAILED
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        return _aws(exc.__context__)  # boto3 wraps S3's answer; say what S3 said
    return f"{type(exc).__name__}: {exc}", FAILED
