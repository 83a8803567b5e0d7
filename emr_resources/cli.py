"""`fruits-emr`: create, inspect, terminate and price the Fruits! EMR cluster (eu-west-1).

Reads this package's files (cluster.yaml, security_configuration.json, bootstrap.sh,
requirements.lock, prices.json, iam/, s3_bucket_policy.json) as package data. Settings (bucket,
prefix, region, KMS key, cluster id) come from the command line, else from the same FRUITS_*
variables and defaults as the pipeline's (`fruits_assets.settings`). Pure functions (`load_resources`, `fill_placeholders`,
`build_run_job_flow_request`, `build_security_configuration`; cost.py's `estimate_run`) build
requests and numbers; the `cmd_*` functions are the only ones that call AWS. boto3 clients are
made with a region only, so `AWS_ENDPOINT_URL` (a local S3/EMR server, in tests) is honoured.

    fruits-emr create --bucket my-bucket --wait      # prints: export FRUITS_EMR_CLUSTER_ID=j-...
    fruits-emr status   [--cluster-id j-...]
    fruits-emr terminate [--cluster-id j-...]
    fruits-emr cost                                 # a full Fruits-360 run; --images N, --hours H, --json
    fruits-emr render --bucket my-bucket --out-dir /tmp/fruits-iam   # filled IAM / bucket policies
    fruits-emr lock                                 # requirements.txt -> requirements.lock (uv)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

import yaml

from emr_resources import cost as cost_model
from emr_resources.cost import runs_executors
from emr_resources.lock import LOCK_NAME, read_lock, uv_compile_args
from fruits_assets.errors import FruitsConfigError
from fruits_assets.settings import EU_REGION, FruitsSettings, validate_region

DEFAULT_REGION = EU_REGION

TERMINAL_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
READY_STATES = ("WAITING", "RUNNING")


def default_resources_dir() -> Path:
    """This package's own files, wherever it is installed."""
    from importlib.resources import files

    return Path(str(files(__package__)))


@dataclass
class EmrResources:
    """The parsed files of emr_resources/ (placeholders not yet filled)."""

    directory: Path
    cluster: dict
    security_configuration: dict
    prices: dict

    def bootstrap_files(self) -> list[Path]:
        """The bootstrap script, then the lock it installs (requirements.lock: every package,
        pinned and hashed; `fruits-emr lock` makes it from requirements.txt)."""
        bootstrap = self.cluster["bootstrap"]
        return [self.directory / bootstrap["script"], self.directory / bootstrap["requirements"]]


def load_resources(directory: Path | str | None = None) -> EmrResources:
    directory = Path(directory) if directory else default_resources_dir()
    if not (directory / "cluster.yaml").is_file():
        raise FruitsConfigError(
            f"No cluster.yaml in {directory}: pass --resources-dir a copy of the emr_resources/ folder."
        )
    return EmrResources(
        directory=directory,
        cluster=yaml.safe_load((directory / "cluster.yaml").read_text()),
        security_configuration=json.loads((directory / "security_configuration.json").read_text()),
        prices=json.loads((directory / "prices.json").read_text()),
    )


def fill_placeholders(obj, values: dict[str, str]):
    """Substitute ${NAME} in every string of a parsed document (after parsing: no injection).

    An unknown placeholder raises FruitsConfigError instead of reaching AWS unfilled.
    """
    if isinstance(obj, str):
        try:
            return Template(obj).substitute(values)
        except KeyError as missing:
            raise FruitsConfigError(
                f"Placeholder ${{{missing.args[0]}}} in {obj!r} has no value: pass it to the tool "
                "(e.g. --bucket, --prefix, FRUITS_KMS_KEY_ID)."
            ) from None
    if isinstance(obj, dict):
        return {key: fill_placeholders(value, values) for key, value in obj.items()}
    if isinstance(obj, list):
        return [fill_placeholders(value, values) for value in obj]
    return obj


def placeholder_values(
    bucket: str,
    prefix: str,
    region: str,
    account_id: str = "",
    kms_key_id: str = "",
    staging_prefix: str = "",
) -> dict[str, str]:
    if not bucket:
        raise FruitsConfigError("No S3 bucket: pass --bucket or set FRUITS_S3_BUCKET.")
    prefix = prefix.strip("/")
    if not prefix:
        raise FruitsConfigError("The S3 prefix must not be empty (--prefix or FRUITS_S3_PREFIX).")
    # A full key ARN is accepted too: the templates want the key id after "key/".
    key_id = kms_key_id.rsplit("key/", 1)[-1] if kms_key_id else ""
    staging_prefix = (staging_prefix or f"{prefix}/emr-staging").strip("/")
    if not staging_prefix.startswith(prefix + "/"):
        raise FruitsConfigError(
            f"FRUITS_EMR_STAGING_PREFIX={staging_prefix!r} is outside FRUITS_S3_PREFIX={prefix!r}: "
            "the cluster's instance profile may only read and write under the prefix."
        )
    return {
        "BUCKET": bucket,
        "PREFIX": prefix,
        "REGION": region,
        "ACCOUNT_ID": account_id,
        "KMS_KEY_ID": key_id,
        "STAGING_PREFIX": staging_prefix,
    }


def bootstrap_s3_uri(cluster: dict, values: dict[str, str], name: str) -> str:
    """Where `fruits-emr create` uploads the bootstrap file `name`."""
    prefix = fill_placeholders(cluster["bootstrap"]["s3_prefix"], values).strip("/")
    return f"s3://{values['BUCKET']}/{prefix}/{name}"


def _fleet_request(fleet: dict, cluster: dict) -> dict:
    spot = fleet["market"] == "SPOT"
    # Nodes that run executors get gp3 for YARN's local directories: core and task nodes, and the
    # primary of a single-node cluster.
    ebs = runs_executors(cluster, fleet)
    type_configs = []
    for instance_type in fleet["instance_types"]:
        config = {"InstanceType": instance_type, "WeightedCapacity": 1}
        if spot:
            config["BidPriceAsPercentageOfOnDemandPrice"] = 100.0  # never pay above on-demand
        if ebs:
            config["EbsConfiguration"] = {
                "EbsBlockDeviceConfigs": [
                    {
                        "VolumeSpecification": {
                            "VolumeType": "gp3",
                            "SizeInGB": int(cluster["ebs_gb_per_instance"]),
                        },
                        "VolumesPerInstance": 1,
                    }
                ],
                "EbsOptimized": True,
            }
        type_configs.append(config)
    request = {
        "Name": fleet["name"],
        "InstanceFleetType": fleet["type"],
        "TargetOnDemandCapacity": 0 if spot else int(fleet["target_capacity"]),
        "TargetSpotCapacity": int(fleet["target_capacity"]) if spot else 0,
        "InstanceTypeConfigs": type_configs,
    }
    if spot:
        request["LaunchSpecifications"] = {
            "SpotSpecification": {
                "TimeoutDurationMinutes": int(cluster["spot"]["timeout_minutes"]),
                "TimeoutAction": cluster["spot"]["timeout_action"],
                "AllocationStrategy": cluster["spot"]["allocation_strategy"],
            }
        }
    else:
        request["LaunchSpecifications"] = {"OnDemandSpecification": {"AllocationStrategy": "lowest-price"}}
    return request


def build_run_job_flow_request(
    cluster: dict,
    bucket: str,
    prefix: str = "fruits",
    region: str = DEFAULT_REGION,
    *,
    name: str | None = None,
    service_role: str | None = None,
    job_flow_role: str | None = None,
    subnet_ids: list[str] | None = None,
    ec2_key_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    pip_index_url: str | None = None,
) -> dict:
    """The `run_job_flow` keyword arguments for `cluster` (parsed cluster.yaml). Pure."""
    values = placeholder_values(bucket, prefix, region)
    cluster = fill_placeholders(copy.deepcopy(cluster), values)
    instances: dict = {
        "InstanceFleets": [_fleet_request(fleet, cluster) for fleet in cluster["instance_fleets"]],
        # The step launcher submits steps to a running cluster; auto-termination ends it when idle.
        "KeepJobFlowAliveWhenNoSteps": True,
        "TerminationProtected": False,
    }
    if subnet_ids:
        instances["Ec2SubnetIds"] = list(subnet_ids)  # fleets pick the subnet with capacity
    if ec2_key_name:
        instances["Ec2KeyName"] = ec2_key_name
    tags = {**cluster.get("tags", {}), "fruits:bucket": bucket, "fruits:prefix": values["PREFIX"]}
    tags.update(extra_tags or {})
    bootstrap = cluster["bootstrap"]
    bootstrap_args = [bootstrap_s3_uri(cluster, values, bootstrap["requirements"])]
    if pip_index_url:
        bootstrap_args.append(pip_index_url)
    return {
        "Name": name or cluster["name"],
        "ReleaseLabel": cluster["release_label"],
        "LogUri": cluster["log_uri"],
        "Applications": [{"Name": app} for app in cluster["applications"]],
        "Configurations": cluster["configurations"],
        "Instances": instances,
        "BootstrapActions": [
            {
                "Name": bootstrap["name"],
                "ScriptBootstrapAction": {
                    "Path": bootstrap_s3_uri(cluster, values, bootstrap["script"]),
                    "Args": bootstrap_args,
                },
            }
        ],
        "SecurityConfiguration": cluster["security_configuration"],
        "AutoTerminationPolicy": {"IdleTimeout": int(cluster["idle_timeout_seconds"])},
        "ServiceRole": service_role or cluster["service_role"],
        "JobFlowRole": job_flow_role or cluster["job_flow_role"],
        "StepConcurrencyLevel": int(cluster.get("step_concurrency_level", 1)),
        "EbsRootVolumeSize": int(cluster["ebs_root_volume_size_gb"]),
        "VisibleToAllUsers": True,
        "Tags": [{"Key": key, "Value": str(value)} for key, value in sorted(tags.items())],
    }


# EMR on EC2 makes no TLS certificates of its own, emr-7.9.0 included: in-transit encryption
# takes either a zip of PEM files on S3 (CertificateProviderType "PEM", S3Object) or a custom
# certificate-provider JAR (CertificateProviderType "Custom", S3Object, CertificateProviderClass).
# AWS warns that a self-signed certificate is a proof of concept only: use a trusted CA.
IN_TRANSIT_CERTIFICATES_SOURCE = (
    "https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-encryption-enable.html#emr-encryption-certificates"
)


def _s3_uri(location: str) -> str:
    """`arn:aws:s3:::bucket/key` (allowed for S3Object) as `s3://bucket/key`; s3:// as is."""
    return "s3://" + location.removeprefix("arn:aws:s3:::") if location.startswith("arn:aws:s3:::") else location


def build_security_configuration(
    template: dict,
    region: str,
    account_id: str,
    kms_key_id: str,
    *,
    s3_kms: bool = False,
    tls_certificates_uri: str | None = None,
) -> dict:
    """The security configuration document: at-rest encryption always (local disks with the KMS
    key; S3 with SSE-S3, or SSE-KMS when `s3_kms`); in-transit encryption only when a PEM
    certificates zip on S3 is given (EMR on EC2 makes no certificates: IN_TRANSIT_CERTIFICATES_SOURCE).
    Pure."""
    if not kms_key_id:
        raise FruitsConfigError(
            "Local-disk encryption needs a KMS key: set FRUITS_KMS_KEY_ID (key id or ARN, in "
            f"{region}) or pass --kms-key-id."
        )
    values = {"REGION": region, "ACCOUNT_ID": account_id, "KMS_KEY_ID": kms_key_id.rsplit("key/", 1)[-1]}
    document = fill_placeholders(copy.deepcopy(template), values)
    encryption = document["EncryptionConfiguration"]
    if kms_key_id.startswith("arn:"):
        encryption["AtRestEncryptionConfiguration"]["LocalDiskEncryptionConfiguration"]["AwsKmsKey"] = kms_key_id
    if s3_kms:
        encryption["AtRestEncryptionConfiguration"]["S3EncryptionConfiguration"] = {
            "EncryptionMode": "SSE-KMS",
            "AwsKmsKey": encryption["AtRestEncryptionConfiguration"]["LocalDiskEncryptionConfiguration"]["AwsKmsKey"],
        }
    if tls_certificates_uri:
        if not _s3_uri(tls_certificates_uri).startswith("s3://"):
            raise FruitsConfigError(
                f"--tls-certificates {tls_certificates_uri!r} must be an s3:// URI (or arn:aws:s3::: ARN) of a PEM "
                "zip: privateKey.pem, certificateChain.pem and, unless a public CA signed it, trustedCertificates.pem."
            )
        encryption["EnableInTransitEncryption"] = True
        encryption["InTransitEncryptionConfiguration"] = {
            "TLSCertificateConfiguration": {
                "CertificateProviderType": "PEM",
                "S3Object": tls_certificates_uri,
            }
        }
    else:
        encryption["EnableInTransitEncryption"] = False
        encryption.pop("InTransitEncryptionConfiguration", None)
    return document


# -- AWS calls ----------------------------------------------------------------------------------
def _client(service: str, region: str):
    import boto3

    return boto3.client(service, region_name=region)  # AWS_ENDPOINT_URL is honoured by boto3


def _settings(args) -> FruitsSettings:
    """The command line's values, else FRUITS_* variables, else the pipeline's defaults."""
    given = {
        "aws_region": getattr(args, "region", None),
        "s3_bucket": getattr(args, "bucket", None),
        "s3_prefix": getattr(args, "prefix", None),
        "kms_key_id": getattr(args, "kms_key_id", None),
        "emr_cluster_id": getattr(args, "cluster_id", None),
    }
    return FruitsSettings(**{k: v for k, v in given.items() if v}).resolve(os.environ, check=False)


def _region(args) -> str:
    settings = _settings(args)
    return validate_region(settings.aws_region, settings.allow_non_eu_region)


def _cluster_id(args) -> str:
    cluster_id = _settings(args).emr_cluster_id
    if not cluster_id:
        raise FruitsConfigError("No cluster id: pass --cluster-id or set FRUITS_EMR_CLUSTER_ID.")
    return cluster_id


def ensure_security_configuration(emr, name: str, document: dict) -> bool:
    """Create the security configuration unless one of that name exists; True if created.

    An existing one is kept if it says the same (EMR cannot update them); one that says something
    else (e.g. no in-transit encryption, where --tls-certificates now asks for it) is an error
    naming the command that deletes it, never a cluster silently started with the old settings.
    """
    from botocore.exceptions import ClientError

    try:
        existing = emr.describe_security_configuration(Name=name)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("InvalidRequestException", "ResourceNotFoundException"):
            raise
    else:
        if json.loads(existing["SecurityConfiguration"]) != document:
            raise FruitsConfigError(
                f"The security configuration {name!r} exists with other settings than these (in-transit "
                "encryption, the KMS key, --s3-kms), and EMR cannot update one. Delete it, then create again: "
                f"aws emr delete-security-configuration --name {name}"
            )
        return False
    emr.create_security_configuration(Name=name, SecurityConfiguration=json.dumps(document))
    return True


def in_transit_summary(document: dict) -> str:
    """One line on the security configuration's in-transit encryption, and why when it is off."""
    encryption = document["EncryptionConfiguration"]
    if encryption.get("EnableInTransitEncryption"):
        tls = encryption["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"]
        return f"in-transit encryption: ON ({tls['CertificateProviderType']} certificates {tls['S3Object']})"
    return (
        "in-transit encryption: OFF (EMR on EC2 makes no TLS certificates itself; it takes a PEM zip on S3 or a "
        f"certificate-provider JAR: {IN_TRANSIT_CERTIFICATES_SOURCE}). To turn it on, pass --tls-certificates "
        "s3://<bucket>/<prefix>/tls/certs.zip (README: 'Run on AWS EMR')"
    )


# The tag AmazonEMRServicePolicy_v2 (and iam/emr_service_role_policy.json, which follows it)
# requires on the network EMR uses: it launches instances only into subnets and security groups
# that carry it, and creates its default security groups only in a VPC that carries it ("You must
# manually tag a VPC if you want Amazon EMR to create default security groups": EMR Management
# Guide, "Tagging resources to use managed policies",
# https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-managed-iam-policies.html).
EMR_NETWORK_TAG = ("for-use-with-amazon-emr-managed-policies", "true")
# The security groups EMR creates and reuses by name in a VPC (an existing one must be tagged too).
EMR_DEFAULT_SECURITY_GROUPS = ("ElasticMapReduce-master", "ElasticMapReduce-slave", "ElasticMapReduce-ServiceAccess")


def _has_emr_tag(resource: dict) -> bool:
    key, value = EMR_NETWORK_TAG
    return any(tag["Key"] == key and tag["Value"] == value for tag in resource.get("Tags") or [])


def check_network_tags(ec2, region: str, subnet_ids: list[str] | None) -> str:
    """Fail, naming the one `aws ec2 create-tags` command to run, unless the VPC, the subnets and
    any existing EMR security group EMR will use carry EMR_NETWORK_TAG; else describe them.

    Without subnets EMR picks one of the default VPC ("If EC2-Classic is not supported, and no
    Subnet is specified, Amazon EMR chooses the subnet for you": EMR API, Ec2InstanceAttributes),
    so the default VPC and every one of its default subnets are checked."""
    if subnet_ids:
        subnets = ec2.describe_subnets(SubnetIds=list(subnet_ids))["Subnets"]
        vpc_ids = sorted({subnet["VpcId"] for subnet in subnets})
        where = "the VPC of --subnet-id"
    else:
        defaults = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not defaults:
            raise FruitsConfigError(
                f"No --subnet-id and no default VPC in {region}: pass --subnet-id (repeatable) with "
                "subnets of a VPC tagged for EMR (README: 'Run on AWS EMR', step 1)."
            )
        vpc_ids = [defaults[0]["VpcId"]]
        subnets = ec2.describe_subnets(
            Filters=[{"Name": "vpc-id", "Values": vpc_ids}, {"Name": "default-for-az", "Values": ["true"]}]
        )["Subnets"]
        where = "the default VPC (no --subnet-id: EMR picks one of its default subnets)"
    vpcs = ec2.describe_vpcs(VpcIds=vpc_ids)["Vpcs"]
    groups = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": vpc_ids},
            {"Name": "group-name", "Values": list(EMR_DEFAULT_SECURITY_GROUPS)},
        ]
    )["SecurityGroups"]
    untagged = [
        *sorted(vpc["VpcId"] for vpc in vpcs if not _has_emr_tag(vpc)),
        *sorted(subnet["SubnetId"] for subnet in subnets if not _has_emr_tag(subnet)),
        *sorted(group["GroupId"] for group in groups if not _has_emr_tag(group)),
    ]
    key, value = EMR_NETWORK_TAG
    if untagged:
        raise FruitsConfigError(
            f"EMR's service role launches clusters only into a VPC, subnets and EMR security groups "
            f"tagged {key}={value} (AmazonEMRServicePolicy_v2; the VPC too, or EMR cannot create its "
            f"default security groups). Not tagged, in {where}: {', '.join(untagged)}. Tag them once: "
            f"aws ec2 create-tags --region {region} --resources {' '.join(untagged)} --tags Key={key},Value={value}"
        )
    names = [*sorted(vpc["VpcId"] for vpc in vpcs), *sorted(subnet["SubnetId"] for subnet in subnets)]
    return f"{', '.join(names)}{f' and {len(groups)} EMR security group(s)' if groups else ''}, tagged {key}={value}"


def wait_until_ready(emr, cluster_id: str, timeout_seconds: float, poll_seconds: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
        state = status["State"]
        if state in READY_STATES:
            return state
        if state in TERMINAL_STATES:
            reason = status.get("StateChangeReason", {}).get("Message", "no reason given")
            raise FruitsConfigError(
                f"Cluster {cluster_id} is {state} ({reason}): see the bootstrap logs under its LogUri."
            )
        if time.monotonic() > deadline:
            raise FruitsConfigError(
                f"Cluster {cluster_id} is still {state} after {timeout_seconds:.0f}s: check "
                "`fruits-emr status`, or terminate it."
            )
        time.sleep(poll_seconds)


def cmd_create(args, out=None) -> str:
    out = out or sys.stdout
    from fruits_assets.storage import Storage

    region = _region(args)
    resources = load_resources(args.resources_dir)
    settings = _settings(args)
    bucket, prefix, kms_key_id = settings.s3_bucket, settings.s3_prefix, settings.kms_key_id
    # The step launcher stages under FRUITS_EMR_STAGING_PREFIX: it must be inside the prefix.
    values = placeholder_values(bucket, prefix, region, staging_prefix=settings.emr_staging_prefix)
    readable = f"s3://{bucket}/{values['PREFIX']}/"
    if args.tls_certificates and not _s3_uri(args.tls_certificates).startswith(readable):
        # EMR downloads the zip to every node; the nodes' instance profile reads only the prefix.
        raise FruitsConfigError(
            f"--tls-certificates {args.tls_certificates!r}: put the zip under {readable} (e.g. {readable}tls/certs.zip), "
            "the only place the cluster's instance profile may read."
        )
    account_id = _client("sts", region).get_caller_identity()["Account"]
    request = build_run_job_flow_request(
        resources.cluster,
        bucket,
        prefix,
        region,
        name=args.name,
        service_role=args.service_role,
        job_flow_role=args.job_flow_role,
        subnet_ids=args.subnet_id,
        ec2_key_name=args.ec2_key_name,
        pip_index_url=args.pip_index_url,
    )
    security = build_security_configuration(
        resources.security_configuration,
        region,
        account_id,
        kms_key_id,
        s3_kms=args.s3_kms,
        tls_certificates_uri=args.tls_certificates,
    )
    # Before anything is uploaded or started: EMR would otherwise fail minutes later, or never start.
    network = check_network_tags(_client("ec2", region), region, args.subnet_id)
    print(f"network: {network}", file=out)
    # The bootstrap files go to S3 server-side encrypted, like every object this project writes.
    storage = Storage(region_name=region, kms_key_id=kms_key_id if args.s3_kms else None)
    values = placeholder_values(bucket, prefix, region)
    for path in resources.bootstrap_files():
        uri = bootstrap_s3_uri(resources.cluster, values, path.name)
        storage.write_bytes(uri, path.read_bytes())
        print(f"uploaded {path.name} to {uri}", file=out)

    emr = _client("emr", region)
    created = ensure_security_configuration(emr, request["SecurityConfiguration"], security)
    print(
        f"security configuration {request['SecurityConfiguration']}: {'created' if created else 'exists, kept'}",
        file=out,
    )
    print(in_transit_summary(security), file=out)
    cluster_id = emr.run_job_flow(**request)["JobFlowId"]
    print(f"cluster {cluster_id} ({request['ReleaseLabel']}) starting in {region}", file=out)
    if args.wait:
        state = wait_until_ready(emr, cluster_id, args.timeout, args.poll_seconds)
        print(f"cluster {cluster_id} is {state}", file=out)
    print(f"export FRUITS_EMR_CLUSTER_ID={cluster_id}", file=out)
    return cluster_id


def cmd_run(args, out=None) -> int:
    """Create a cluster (or use --cluster-id), materialize on it, and terminate it, whatever the
    outcome: success, failure, Ctrl-C or SIGTERM (a cluster given with --cluster-id is kept unless
    --terminate). The run is `dagster asset materialize` with FRUITS_DEPLOYMENT=emr, in a process
    of its own; an interrupt reaches it first (its step launcher cancels the running EMR step),
    then the cluster is terminated. Returns the materialization's exit code."""
    out = out or sys.stdout
    region = _region(args)
    emr = _client("emr", region)
    given = args.cluster_id
    started = time.monotonic()
    terminate = args.terminate or not given
    code, running = 1, False
    with _interrupts_as_keyboard_interrupt():
        # The cluster's id first, then the wait (~10 min) inside the `try`: an interrupt while the
        # cluster starts, or a start that fails or times out, still terminates it.
        cluster_id = given or cmd_create(argparse.Namespace(**{**vars(args), "wait": False}), out)
        try:
            if not given:
                state = wait_until_ready(emr, cluster_id, args.timeout, args.poll_seconds)
                print(f"cluster {cluster_id} is {state}", file=out, flush=True)
            running = True
            code = materialize_on(cluster_id, region, args, out)
        except KeyboardInterrupt:
            why = "the run's step launcher cancels its EMR step" if running else "before the run started"
            print(f"fruits-emr run: interrupted; {why}", file=out)
            code = 130
        finally:
            _end(emr, cluster_id, terminate, started, out)
    return code


def _end(emr, cluster_id: str, terminate: bool, started: float, out) -> None:
    """What `run` does last, whatever happened: terminate the cluster (or say it is kept)."""
    hours = (time.monotonic() - started) / 3600.0
    if terminate:
        emr.terminate_job_flows(JobFlowIds=[cluster_id])
        state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
        print(f"cluster {cluster_id}: terminated ({state}) after {hours * 60:.1f} min", file=out)
    else:
        print(f"cluster {cluster_id}: kept (given with --cluster-id); `fruits-emr terminate` when done", file=out)


@contextlib.contextmanager
def _interrupts_as_keyboard_interrupt():
    """SIGTERM (a CI job cancelled, `kill`) ends `run` as Ctrl-C does: the cluster is terminated."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def materialize_on(cluster_id: str, region: str, args, out) -> int:
    """`dagster asset materialize --select <args.select>` on this cluster; its exit code. The child
    is in this process group, so Ctrl-C reaches it too; on SIGTERM it gets SIGINT, and is waited
    for (its launcher cancels the running step) before the cluster goes."""
    settings = _settings(args)
    env = {
        **os.environ,
        "FRUITS_DEPLOYMENT": "emr",
        "FRUITS_EMR_CLUSTER_ID": cluster_id,
        "FRUITS_AWS_REGION": region,
        "FRUITS_S3_BUCKET": settings.s3_bucket,
        "FRUITS_S3_PREFIX": settings.s3_prefix,
    }
    dagster = shutil.which("dagster", path=os.path.dirname(sys.executable)) or "dagster"
    command = [dagster, "asset", "materialize", "-m", "fruits_assets.definitions", "--select", args.select]
    print(f"running {' '.join(command)} on {cluster_id}", file=out, flush=True)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=args.cancel_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def cmd_status(args, out=None) -> dict:
    out = out or sys.stdout
    region = _region(args)
    cluster = _client("emr", region).describe_cluster(ClusterId=_cluster_id(args))["Cluster"]
    status = cluster["Status"]
    summary = {
        "id": cluster["Id"],
        "name": cluster.get("Name"),
        "state": status["State"],
        "reason": status.get("StateChangeReason", {}).get("Message", ""),
        "release": cluster.get("ReleaseLabel"),
        "instances": cluster.get("InstanceCollectionType"),
        "security_configuration": cluster.get("SecurityConfiguration"),
        "master": cluster.get("MasterPublicDnsName", ""),
        "log_uri": cluster.get("LogUri", ""),
        "normalized_instance_hours": cluster.get("NormalizedInstanceHours", 0),
    }
    for key, value in summary.items():
        print(f"{key:>26}: {value}", file=out)
    return summary


def cmd_terminate(args, out=None) -> str:
    out = out or sys.stdout
    region = _region(args)
    cluster_id = _cluster_id(args)
    emr = _client("emr", region)
    emr.terminate_job_flows(JobFlowIds=[cluster_id])
    state = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    print(f"cluster {cluster_id}: terminate requested, now {state}", file=out)
    return state


def cmd_cost(args, out=None) -> float:
    """Print what a run costs (emr_resources/cost.py: every figure with its source), or the same
    as JSON with --json; return the total in USD."""
    out = out or sys.stdout
    resources = load_resources(args.resources_dir)
    measurements = cost_model.load_measurements(args.measurements or resources.directory / cost_model.MEASUREMENTS_NAME)
    settings = _settings(args)
    mismatches = cost_model.sizing_mismatches(resources.cluster)
    if mismatches:
        raise FruitsConfigError(
            "cluster.yaml's spark-defaults disagree with its executor_sizing: " + "; ".join(mismatches)
        )
    estimate = cost_model.estimate_run(
        resources.cluster,
        resources.prices,
        measurements,
        images=args.images,
        image_size=args.image_size,
        poll_seconds=float(settings.emr_poll_seconds),
        wait_for_logs=bool(settings.emr_wait_for_logs),
        hours=args.hours,
        include_idle_timeout=args.include_idle_timeout,
    )
    if args.json:
        print(json.dumps(estimate.as_dict(), indent=2), file=out)
    else:
        print(cost_model.format_estimate(estimate, resources.prices), file=out)
    return estimate.total_usd


def cmd_render(args, out=None) -> list[Path]:
    """Write the IAM and bucket documents with placeholders filled, for `aws iam`/`aws s3api`."""
    out = out or sys.stdout
    region = _region(args)
    resources = load_resources(args.resources_dir)
    account_id = args.account_id or _client("sts", region).get_caller_identity()["Account"]
    settings = _settings(args)
    values = placeholder_values(
        settings.s3_bucket,
        settings.s3_prefix,
        region,
        account_id,
        settings.kms_key_id,
        settings.emr_staging_prefix,
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    sources = sorted((resources.directory / "iam").glob("*.json")) + [
        resources.directory / "s3_bucket_policy.json",
        resources.directory / "public_access_block.json",
        resources.directory / "bucket_encryption.json",
        resources.directory / "kms_key_policy.json",
    ]
    for source in sources:
        document = fill_placeholders(json.loads(source.read_text()), values)
        target = out_dir / source.name
        target.write_text(json.dumps(document, indent=2) + "\n")
        written.append(target)
        print(f"wrote {target}", file=out)
    return written


def uv_executable() -> list[str]:
    """uv on the PATH, else the one the `uv` package of the dev extras ships."""
    found = shutil.which("uv")
    if found:
        return [found]
    try:
        from uv import find_uv_bin

        return [find_uv_bin()]
    except (ImportError, FileNotFoundError):
        raise FruitsConfigError(
            "fruits-emr lock needs uv: `pip install uv` (it is in this project's dev extras), then run it again."
        ) from None


def cmd_lock(args, out=None) -> Path:
    """requirements.txt -> requirements.lock (emr_resources/ of this checkout, or --resources-dir):
    one universal resolution for CPython 3.11, every package pinned with the hashes of all its
    wheels, so the aarch64 nodes and the x86_64 emulation install the same lock."""
    out = out or sys.stdout
    resources = load_resources(args.resources_dir)
    if resources.cluster["bootstrap"]["requirements"] != LOCK_NAME:
        raise FruitsConfigError(
            f"cluster.yaml's bootstrap installs {resources.cluster['bootstrap']['requirements']}, not {LOCK_NAME}."
        )
    command = [*uv_executable(), *uv_compile_args()]
    print(f"running in {resources.directory}: {' '.join(command)}", file=out)
    # uv echoes the whole lock on stdout besides writing it: keep its messages (stderr) only.
    result = subprocess.run(command, cwd=resources.directory, stdout=subprocess.DEVNULL)
    if result.returncode != 0:
        raise FruitsConfigError(f"uv pip compile failed (exit {result.returncode}); its message is above.")
    lock = resources.directory / LOCK_NAME
    entries = read_lock(lock.read_text())
    print(f"wrote {lock}: {len(entries)} pinned packages, {sum(len(e.hashes) for e in entries)} hashes", file=out)
    return lock


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fruits-emr", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--region", help="AWS region (default FRUITS_AWS_REGION, else eu-west-1)")
    common.add_argument("--resources-dir", help="emr_resources/ folder (default: the repository's)")
    sub = root.add_subparsers(dest="command", required=True)

    cluster = argparse.ArgumentParser(add_help=False)  # what `create` and `run` take to make a cluster
    create = cluster
    create.add_argument("--bucket", help="S3 bucket (default FRUITS_S3_BUCKET)")
    create.add_argument("--prefix", help="S3 prefix (default FRUITS_S3_PREFIX, else fruits)")
    create.add_argument("--name", help="cluster name (default: cluster.yaml's)")
    create.add_argument("--service-role", help="EMR service role name (default: cluster.yaml's)")
    create.add_argument("--job-flow-role", help="EC2 instance profile name (default: cluster.yaml's)")
    create.add_argument(
        "--subnet-id",
        action="append",
        help="EC2 subnet id (repeatable; default: EMR picks one of the default VPC). The subnets, their VPC and "
        "any ElasticMapReduce-* security group must be tagged for-use-with-amazon-emr-managed-policies=true "
        "(checked)",
    )
    create.add_argument("--ec2-key-name", help="EC2 key pair for SSH to the master (optional)")
    create.add_argument("--kms-key-id", help="KMS key for local disks (default FRUITS_KMS_KEY_ID)")
    create.add_argument("--s3-kms", action="store_true", help="EMRFS writes with SSE-KMS (that key) instead of SSE-S3")
    create.add_argument(
        "--tls-certificates",
        help="s3:// URI, under the prefix, of a PEM zip (privateKey.pem, certificateChain.pem, trustedCertificates.pem):"
        " enables in-transit encryption (EMR makes no certificates itself)",
    )
    create.add_argument("--pip-index-url", help="PyPI mirror for the bootstrap (nodes without internet access)")
    create.add_argument("--timeout", type=float, default=1800.0, help="how long to wait for WAITING, seconds")
    create.add_argument("--poll-seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    create = sub.add_parser("create", parents=[common, cluster], help="create the cluster")
    create.add_argument("--wait", action="store_true", help="wait until the cluster is WAITING")
    run = sub.add_parser(
        "run",
        parents=[common, cluster],
        help="create a cluster, materialize on it, terminate it (on success, failure or interrupt)",
    )
    run.add_argument("--cluster-id", help="run on this cluster instead (kept afterwards, unless --terminate)")
    run.add_argument("--terminate", action="store_true", help="terminate a --cluster-id cluster too")
    run.add_argument("--select", default="*", help="the assets to materialize (default: all)")
    run.add_argument("--cancel-timeout", type=float, default=120.0, help=argparse.SUPPRESS)

    for name, text in (("status", "describe the cluster"), ("terminate", "terminate the cluster")):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("--cluster-id", help="default FRUITS_EMR_CLUSTER_ID")

    cost = sub.add_parser(
        "cost", parents=[common], help="estimate what a run costs (USD), every figure with its source"
    )
    cost.add_argument(
        "--images",
        type=int,
        default=cost_model.FULL_FRUITS_360,
        help="images in the run (default: Fruits-360's 88,000)",
    )
    cost.add_argument(
        "--image-size",
        type=int,
        default=cost_model.DEFAULT_IMAGE_SIZE,
        help="model input size: selects the measured throughput (measurements.json)",
    )
    cost.add_argument("--hours", type=float, help="billed cluster hours, instead of the estimated run time")
    cost.add_argument(
        "--include-idle-timeout",
        action="store_true",
        help="add cluster.yaml's idle timeout (a cluster left to auto-terminate; `fruits-emr run` does not wait for it)",
    )
    cost.add_argument("--measurements", help="a measurements.json (default: emr_resources/'s)")
    cost.add_argument("--json", action="store_true", help="the same, as JSON")

    render = sub.add_parser("render", parents=[common], help="write filled IAM/bucket policy documents")
    render.add_argument("--bucket")
    render.add_argument("--prefix")
    render.add_argument("--account-id", help="default: from STS")
    render.add_argument("--kms-key-id")
    render.add_argument("--out-dir", required=True)

    sub.add_parser(
        "lock",
        parents=[common],
        help="pin every package the nodes install, with hashes (requirements.txt -> requirements.lock; needs uv)",
    )
    return root


COMMANDS = {
    "create": cmd_create,
    "run": cmd_run,
    "status": cmd_status,
    "terminate": cmd_terminate,
    "cost": cmd_cost,
    "render": cmd_render,
    "lock": cmd_lock,
}


def main(argv: list[str] | None = None) -> int:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
        if args.command == "run":
            return result
    except FruitsConfigError as error:
        print(f"fruits-emr {args.command}: error: {error}", file=sys.stderr)
        return 2
    except NoCredentialsError:
        print(
            f"fruits-emr {args.command}: error: no AWS credentials found (set AWS_PROFILE, or run "
            "`aws configure` / `aws sso login`; `aws sts get-caller-identity` must answer)",
            file=sys.stderr,
        )
        return 2
    except (BotoCoreError, ClientError) as error:  # AWS said no, or could not be reached: say what
        print(f"fruits-emr {args.command}: AWS error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
