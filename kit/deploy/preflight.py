"""`kit preflight`: before `cdk deploy`, check the account in the environment for what only a real deploy
would otherwise reveal. Each check passes or fails with the fix; any failure exits 1.

It reads the same context as `cdk` (cdk.json, then `-c key=value`), so it checks the deploy about to run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from kit import REPO, KitError
from kit.cli import add_aws, add_json, session, write_output
from kit.s3 import head, is_not_found, parse
from stacks import names

if TYPE_CHECKING:
    import boto3

    from model_code.manifest import Manifest
    from stacks.config import EndpointConfig, KitConfig

HELP = "check the account before `cdk deploy`: quotas, roles, bootstrap, image, key, artifacts"
SCALING_ROLE = "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
BUILDX = (
    "docker buildx build --platform linux/amd64 --provenance=false -f container/Dockerfile "
    "--output type=image,name=IMAGE,oci-mediatypes=false,push=true ."
)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--context", action="append", default=[], metavar="KEY=VALUE", help="as for cdk: over cdk.json's context"
    )
    add_json(parser, "the checks")
    add_aws(parser)


def run(args: argparse.Namespace) -> int:
    from stacks.config import ConfigError, cdk_context, load_config

    given = [pair.partition("=")[0] for pair in args.context]
    try:
        config = load_config(cdk_context(REPO, [part for pair in args.context for part in ("-c", pair)]), given)
    except ConfigError as exc:
        raise KitError(str(exc)) from None
    checks = preflight(config, session(args, default_region=config.region))
    for check in checks:
        print(f"{'PASS' if check.passed else 'FAIL'} {check.name}: {check.detail}")
        if not check.passed:
            print(f"     fix: {check.fix}")
    write_output(args.json, json.dumps([asdict(c) for c in checks], indent=2).encode())
    failed = [c.name for c in checks if not c.passed]
    print(
        f"{len(checks) - len(failed)}/{len(checks)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def preflight(config: KitConfig, aws: boto3.Session, clients: dict[str, Any] | None = None) -> list[Check]:
    """Every check for this configuration; `clients` replaces some of the session's (tests)."""
    context = Context(config, aws, clients or {})
    checks = [quota(context), bootstrap(context)]
    if config.autoscaling:
        checks.append(scaling_role(context))
    checks.append(image(context) if config.image != "asset" else docker_image_store())
    if config.kmsKeyArn:
        checks.append(key_policy(context))
    if config.vpcSubnetIds:
        checks += [subnets(context), s3_route(context)]
    for name, endpoint in config.endpoints.items():
        checks += [artifact(context, name, endpoint), leftover_log_group(context, name), instance_type(context, name)]
    return checks


class Context:
    def __init__(self, config: KitConfig, aws: boto3.Session, clients: dict[str, Any]) -> None:
        self.config, self.aws, self.clients = config, aws, clients
        self.region = aws.region_name or config.region

    def client(self, name: str) -> Any:
        if name not in self.clients:
            self.clients[name] = self.aws.client(name, region_name=self.region)
        return self.clients[name]

    def stack_outputs(self, suffix: str) -> dict[str, str] | None:
        """The outputs of the kit's stack PREFIX+suffix, or None where it is not deployed."""
        from botocore.exceptions import ClientError

        try:
            stacks = self.client("cloudformation").describe_stacks(StackName=self.config.stack_prefix + suffix)
        except ClientError as exc:
            if "does not exist" in str(exc):
                return None
            raise
        return {o["OutputKey"]: o["OutputValue"] for o in stacks["Stacks"][0].get("Outputs", [])}


def quota(context: Context) -> Check:
    config = context.config
    # An update runs the new fleet beside the old (async endpoints always update blue/green), rolling one more.
    fleets = {n: 2 if e.serving_async or config.deployment != "rolling" else 1 for n, e in config.endpoints.items()}
    need = sum(config.max_instances(e) * fleets[n] + (fleets[n] == 1) for n, e in config.endpoints.items())
    name = f"{config.instanceType} for endpoint usage"
    pages = context.client("service-quotas").get_paginator("list_service_quotas").paginate(ServiceCode="sagemaker")
    found = next((q for page in pages for q in page["Quotas"] if q["QuotaName"] == name), None)
    check = f"quota '{name}'"
    if found is None:
        return Check(
            check, False, "not listed for this account and region", f"pick another instanceType in {context.region}"
        )
    have = int(found["Value"])
    why = " + ".join(
        f"{n}: maxInstances {config.max_instances(e)} x {fleets[n]} fleet(s)" for n, e in config.endpoints.items()
    )
    why += " in an update" + (" (+1 each, rolling)" if 1 in fleets.values() else "")
    fix = (
        f"aws service-quotas request-service-quota-increase --service-code sagemaker "
        f"--quota-code {found['QuotaCode']} --desired-value {need}"
    )
    return Check(check, have >= need, f"{have} available, {need} needed ({why})", "" if have >= need else fix)


def bootstrap(context: Context) -> Check:
    from botocore.exceptions import ClientError

    try:
        status = context.client("cloudformation").describe_stacks(StackName="CDKToolkit")["Stacks"][0]["StackStatus"]
    except ClientError:
        status = None
    ok = status is not None and status.endswith("_COMPLETE") and "ROLLBACK" not in status and "DELETE" not in status
    detail = f"CDKToolkit is {status}" if status else "no CDKToolkit stack"
    return Check(
        "CDK bootstrap", ok, detail, "" if ok else f"node_modules/.bin/cdk bootstrap (region {context.region})"
    )


def scaling_role(context: Context) -> Check:
    from botocore.exceptions import ClientError

    try:
        context.client("iam").get_role(RoleName=SCALING_ROLE)
        return Check("autoscaling service-linked role", True, f"{SCALING_ROLE} exists")
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "NoSuchEntity":
            raise
    return Check(
        "autoscaling service-linked role",
        False,
        f"{SCALING_ROLE} does not exist: registering the scalable target fails",
        "aws iam create-service-linked-role --aws-service-name sagemaker.application-autoscaling.amazonaws.com",
    )


def image(context: Context) -> Check:
    from botocore.exceptions import ClientError

    from stacks.config import ECR_URI

    match = ECR_URI.match(context.config.image)
    assert match is not None  # validated by KitConfig
    account, region, _, repository, reference = match.groups()
    name = f"image {context.config.image}"
    if region != context.region:
        return Check(
            name, False, f"in {region}, the endpoints deploy to {context.region}", f"push it to {context.region}"
        )
    image_id = {"imageDigest": reference[1:]} if reference.startswith("@") else {"imageTag": reference[1:]}
    try:
        found = context.client("ecr").describe_images(
            registryId=account, repositoryName=repository, imageIds=[image_id]
        )
    except ClientError as exc:
        return Check(name, False, exc.response["Error"]["Message"], BUILDX.replace("IMAGE", context.config.image))
    media_type = found["imageDetails"][0].get("imageManifestMediaType", "unknown")
    ok = media_type == DOCKER_V2
    fix = "" if ok else "rebuild and push a Docker v2 manifest: " + BUILDX.replace("IMAGE", context.config.image)
    return Check(name, ok, f"manifest {media_type}" + ("" if ok else ", which SageMaker refuses"), fix)


CONTAINERD_STORE = "io.containerd.snapshotter.v1"
NO_CONTAINERD_STORE = (
    "turn Docker's containerd image store off (Docker Desktop: Settings > General, 'Use containerd for pulling and "
    'storing images\'; Docker Engine: {"features": {"containerd-snapshotter": false}} in /etc/docker/daemon.json, '
    "then restart it), or build and push the image yourself and deploy with -c image=URI (docs/deploying.md, 2b)"
)


def docker_image_store() -> Check:
    """With image=asset, `cdk deploy` builds and pushes the image with the local Docker (or CDK_DOCKER). From
    Docker's containerd image store it pushes an OCI index with a provenance attestation, which SageMaker
    refuses at CreateModel, after the stack has started; the classic store pushes a Docker v2 manifest."""
    import os
    import shutil
    import subprocess

    name = "image asset build"
    docker = os.environ.get("CDK_DOCKER", "docker")
    if shutil.which(docker) is None:
        return Check(name, False, f"no {docker} here: cdk deploy builds the image asset with it", NO_CONTAINERD_STORE)
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{json .DriverStatus}}"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return Check(name, False, f"`{docker} info` did not answer in 60 s", "start the Docker daemon")
    if info.returncode != 0:
        said = (info.stderr or info.stdout).strip().splitlines()[-1:] or ["no output"]
        return Check(name, False, f"`{docker} info` failed: {said[0]}", "start the Docker daemon")
    if CONTAINERD_STORE in info.stdout:
        detail = "Docker stores images in containerd: cdk deploy would push an OCI index that SageMaker refuses"
        return Check(name, False, detail, NO_CONTAINERD_STORE)
    return Check(name, True, "Docker's classic image store: the asset is pushed as a Docker v2 manifest")


def key_policy(context: Context) -> Check:
    from stacks.config import KMS_KEY_ARN
    from stacks.key_policy import key_policy_statements

    key_arn = str(context.config.kmsKeyArn)
    match = KMS_KEY_ARN.match(key_arn)
    assert match is not None
    required = key_policy_statements(context.config, match.group(2), match.group(1))
    policy = json.loads(context.client("kms").get_key_policy(KeyId=key_arn, PolicyName="default")["Policy"])
    missing = [s for s in required if not any(_covers(held, s) for held in policy.get("Statement", []))]
    detail = "holds the statements the kit needs" if not missing else f"lacks {', '.join(s['Sid'] for s in missing)}"
    fix = "" if not missing else f"add to the key policy: {json.dumps(missing)}"
    return Check(f"key policy of {key_arn}", not missing, detail, fix)


def _covers(held: dict[str, Any], needed: dict[str, Any]) -> bool:
    """Whether a statement of the key's policy allows what `needed` allows (same principal, every action)."""
    if held.get("Effect") != "Allow" or held.get("Principal") != needed["Principal"]:
        return False
    actions = held.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    wanted = [needed["Action"]] if isinstance(needed["Action"], str) else needed["Action"]
    return all(a in actions or "kms:*" in actions for a in wanted)


def subnets(context: Context) -> Check:
    found = context.client("ec2").describe_subnets(SubnetIds=context.config.vpcSubnetIds)["Subnets"]
    zones = sorted({s["AvailabilityZone"] for s in found})
    ok = len(zones) >= 2
    fix = "" if ok else "give vpcSubnetIds in at least two Availability Zones (and an S3 gateway endpoint in the VPC)"
    return Check("VPC subnets", ok, f"{len(found)} subnet(s) in {', '.join(zones) or 'no zone'}", fix)


def s3_route(context: Context) -> Check:
    """A VPC-attached model reads its artifact from S3 through its subnets' routes: an S3 gateway endpoint on
    each subnet's route table, a NAT, or an S3 interface endpoint with private DNS. Without one, the download
    waits out ModelDataDownloadTimeoutInSeconds (30 min) and the stack rolls back."""
    ec2 = context.client("ec2")
    found = ec2.describe_subnets(SubnetIds=context.config.vpcSubnetIds)["Subnets"]
    vpcs = sorted({s["VpcId"] for s in found})
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": vpcs}])["RouteTables"]
    service = f"com.amazonaws.{context.region}.s3"
    endpoints = ec2.describe_vpc_endpoints(
        Filters=[{"Name": "vpc-id", "Values": vpcs}, {"Name": "service-name", "Values": [service]}]
    )["VpcEndpoints"]
    gateways = {t for e in endpoints if e.get("VpcEndpointType", "Gateway") == "Gateway" for t in e["RouteTableIds"]}
    interface = any(e.get("VpcEndpointType") == "Interface" and e.get("PrivateDnsEnabled") for e in endpoints)

    def reaches_s3(subnet: dict[str, Any]) -> bool:
        own = [t for t in tables if any(a.get("SubnetId") == subnet["SubnetId"] for a in t.get("Associations", []))]
        main = [t for t in tables if t["VpcId"] == subnet["VpcId"] and any(a.get("Main") for a in t["Associations"])]
        table = (own or main or [{}])[0]
        routes = table.get("Routes", [])
        nat = any(r.get("NatGatewayId") and r.get("DestinationCidrBlock") == "0.0.0.0/0" for r in routes)
        return interface or nat or table.get("RouteTableId") in gateways

    cut_off = [s["SubnetId"] for s in found if not reaches_s3(s)]
    if cut_off:
        fix = f"add an S3 gateway endpoint ({service}) to the route tables of {', '.join(cut_off)}, or a NAT route"
        return Check("S3 from the VPC", False, f"{len(cut_off)} subnet(s) have no route to S3", fix)
    return Check("S3 from the VPC", True, f"every subnet reaches S3 ({len(found)})")


def artifact(context: Context, name: str, endpoint: EndpointConfig) -> Check:
    """The artifact is there with the checksums `kit upload` recorded, and its AOTInductor packages fit the
    instance type's GPU and were loaded under the image's torch release."""
    from botocore.exceptions import ClientError

    from model_code.manifest import MANIFEST, Manifest
    from stacks.config import KIT_BUCKET, ConfigError

    check = f"artifact of {name}"
    if not endpoint.artifact_in_s3:
        try:
            tarball = endpoint.local_tarball(REPO)
        except ConfigError as exc:
            return Check(check, False, str(exc), "package it (the command above)")
        manifest = Manifest.model_validate_json((tarball.parent / "model" / MANIFEST).read_text())
        notes, problems = packages(manifest, context.config)
        detail = "; ".join([f"{endpoint.artifact} holds {', '.join(endpoint.models)}", *notes, *problems])
        return Check(check, not problems, detail, PACKAGE_FIX if problems else "")
    if endpoint.artifact_in_kit_bucket:
        outputs = context.stack_outputs("Foundation")
        if outputs is None:
            return Check(check, False, "the foundation stack is not deployed", "cdk deploy the foundation stack first")
        bucket, key = outputs["ArtifactBucket"], endpoint.artifact.removeprefix(KIT_BUCKET)
    else:
        bucket, key = parse(endpoint.artifact)  # as stacks/config.py checked it
    upload = f"python -m kit upload build/{name}/model{'' if key.endswith('/') else '.tar.gz'} s3://{bucket}/{key}"
    try:
        problems, uploaded = _uploaded(context.client("s3"), bucket, key, endpoint.models)
    except ClientError as exc:
        problems, uploaded = (
            [f"s3://{bucket}/{key}: {exc.response['Error'].get('Message') or exc.response['Error']['Code']}"],
            None,
        )
    if problems:
        return Check(check, False, "; ".join(problems), upload)
    notes, problems = packages(uploaded, context.config) if uploaded else ([], [])
    detail = "; ".join(
        [f"s3://{bucket}/{key}: every file there, with the sha256 `kit upload` recorded", *notes, *problems]
    )
    return Check(check, not problems, detail, PACKAGE_FIX if problems else "")


PACKAGE_FIX = (
    "deploy on an instance type whose GPU runs the package (-c instanceType=...), or build the image with the "
    "torch release that loaded it (-c torchVersion=..., container/torch-versions.txt), or repackage"
)


def packages(manifest: Manifest, config: KitConfig) -> tuple[list[str], list[str]]:
    """(what each AOTInductor package is, what keeps it from serving on this deploy): its architecture
    against the instance type's GPU, the torch release it was loaded under against the image's."""
    from model_code.catalogue import arch_runs_on, instance_gpu

    gpu = instance_gpu(config.instanceType)
    image_torch = config.torchVersion or image_default_torch()
    notes, problems = [], []
    for entry in manifest.models:
        package = entry.package
        if package is None:
            continue
        target = package.cuda_arch if package.device == "cuda" else f"cpu {package.cpu_isa or ''}".strip()
        loaded = package.probed_with_torch
        notes.append(
            f"{entry.name}: AOTInductor package for {target}, {entry.dtype}, "
            + (f"loaded and probed under torch {loaded}" if loaded else "never loaded (packaged without its GPU)")
        )
        if package.device == "cuda" and gpu and package.cuda_arch and not arch_runs_on(package.cuda_arch, gpu[1]):
            problems.append(
                f"{entry.name} holds {package.cuda_arch} kernels, {config.instanceType}'s {gpu[0]} is {gpu[1]}"
            )
        if loaded and loaded.split("+")[0] != image_torch:
            problems.append(f"{entry.name} was loaded under torch {loaded}, the image has torch {image_torch}")
    return notes, problems


def image_default_torch() -> str:
    """The serving image's torch when torchVersion is not set: the first row of container/torch-versions.txt."""
    rows = (REPO / "container" / "torch-versions.txt").read_text().splitlines()
    return next(row.split()[0] for row in rows if row.strip() and not row.startswith("#"))


def _uploaded(s3: Any, bucket: str, key: str, models: list[str]) -> tuple[list[str], Manifest | None]:
    """What is wrong with an uploaded artifact (a prefix against its manifest, a tarball by its recorded
    sha256) and, for a prefix, its manifest."""
    from botocore.exceptions import ClientError

    from model_code.manifest import MANIFEST, Manifest

    if not key.endswith("/"):
        found = head(s3, bucket, key)
        if found is None:
            return [f"s3://{bucket}/{key}: no such object"], None
        sent = found.get("Metadata", {}).get("sha256")
        return ([] if sent else [f"s3://{bucket}/{key} was not sent by kit upload"]), None
    try:
        manifest = Manifest.model_validate_json(s3.get_object(Bucket=bucket, Key=key + MANIFEST)["Body"].read())
    except ClientError as exc:
        if is_not_found(exc):
            return [f"s3://{bucket}/{key}: no {MANIFEST} there"], None
        raise
    problems = [f"the manifest lacks {m}" for m in models if manifest.entry(m) is None]
    for rel, digest in sorted(manifest.sha256.items()):
        found = head(s3, bucket, key + rel)
        stored = found.get("Metadata", {}).get("sha256") if found else None
        if found is None:
            problems.append(f"{rel}: not in S3")
        elif stored != digest:
            problems.append(f"{rel}: sha256 {stored} in S3, {digest} in the manifest")
    return problems, manifest


def leftover_log_group(context: Context, name: str) -> Check:
    """A destroy keeps the endpoint's log group; a fresh create of the same name then fails."""
    group = names.log_group(names.endpoint_name(context.config.prefix, name))
    check = f"log group {group}"
    if context.stack_outputs("Endpoints") is not None:
        return Check(check, True, "the endpoints stack exists and owns it")
    found = context.client("logs").describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    if not any(g["logGroupName"] == group for g in found):
        return Check(check, True, "free")
    return Check(
        check,
        False,
        "kept by an earlier destroy: creating the stack fails with 'already exists'",
        f"cdk deploy --import-existing-resources (adopts it), or aws logs delete-log-group --log-group-name {group}",
    )


def instance_type(context: Context, name: str) -> Check:
    """SageMaker refuses an update that changes the instance type of an autoscaled variant."""
    from botocore.exceptions import ClientError

    config = context.config
    endpoint = f"{config.prefix}-{name}"
    check = f"instance type of {endpoint}"
    sagemaker = context.client("sagemaker")
    try:
        config_name = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    except ClientError as exc:  # SageMaker's "no such endpoint" is a ValidationException; the rest is not that
        if exc.response["Error"]["Code"] != "ValidationException" or "Could not find" not in str(exc):
            raise
        return Check(check, True, "not deployed yet")
    variant = sagemaker.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"][0]
    deployed = variant.get("InstanceType")
    if deployed == config.instanceType:
        return Check(check, True, f"{deployed}, unchanged")
    targets = context.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{endpoint}/variant/{variant['VariantName']}"]
    )["ScalableTargets"]
    if not targets or not config.autoscaling:
        return Check(check, True, f"{deployed} -> {config.instanceType}, no scaling target in the way")
    return Check(
        check,
        False,
        f"{deployed} -> {config.instanceType} on an autoscaled endpoint, which SageMaker refuses",
        "deploy with -c autoscaling=false and the old instanceType first, then the new instanceType",
    )
