"""The EMR cluster tooling (`fruits-emr`, emr_resources/) against a real EMR/S3 API server.

`fruits-emr create/status/terminate` run unchanged against moto's server mode on loopback (the
`moto_server` fixture sets AWS_ENDPOINT_URL, which boto3 honours): a real HTTP API, but no real
cluster. moto does not implement ListInstanceFleets or GetAutoTerminationPolicy, so the fleets
(Spot, Graviton, fallbacks) and the auto-termination policy are checked on the request the CLI
builds and sends; what moto does record (release, applications, configurations, log URI, security
configuration, bootstrap action, tags, the uploaded bootstrap's encryption) is checked on the server.
"""

import gzip
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

from emr_resources import cli as emr_cli
from fruits_assets.errors import FruitsConfigError
from fruits_assets_tests.emr_emulation import tag_default_network_for_emr

RESOURCES = Path(__file__).resolve().parents[1] / "emr_resources"
KMS_KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture
def resources() -> emr_cli.EmrResources:
    return emr_cli.load_resources(RESOURCES)


@pytest.fixture
def emr(moto_server):
    return boto3.client("emr", region_name="eu-west-1")


@pytest.fixture
def cli_env(monkeypatch):
    for name in ("FRUITS_AWS_REGION", "FRUITS_ALLOW_NON_EU_REGION", "FRUITS_S3_PREFIX", "FRUITS_EMR_CLUSTER_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRUITS_KMS_KEY_ID", KMS_KEY)


EMR_TAG = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}


@pytest.fixture
def ec2(moto_server):
    return boto3.client("ec2", region_name="eu-west-1")


@pytest.fixture
def emr_network(ec2):
    """The default VPC, its default subnets and any EMR security group tagged for EMR, as README
    step 1 has an administrator do (moto's server keeps them for the whole session)."""
    tag_default_network_for_emr("eu-west-1")


def default_network(ec2) -> tuple[str, list[str]]:
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    subnets = ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}, {"Name": "default-for-az", "Values": ["true"]}]
    )["Subnets"]
    return vpc["VpcId"], sorted(s["SubnetId"] for s in subnets)


def create_cluster(bucket: str, capsys) -> str:
    assert emr_cli.main(["create", "--bucket", bucket, "--wait", "--poll-seconds", "0.05", "--timeout", "30"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"^export FRUITS_EMR_CLUSTER_ID=(j-[A-Z0-9]+)$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def test_create_makes_the_configured_cluster(
    moto_server, s3_bucket, emr, cli_env, emr_network, resources, capsys, monkeypatch
):
    sent = {}
    real_client = emr_cli._client

    def recording_client(service, region):
        client = real_client(service, region)
        if service == "emr":
            original = client.run_job_flow

            def run_job_flow(**request):
                sent.update(request)
                return original(**request)

            client.run_job_flow = run_job_flow
        return client

    monkeypatch.setattr(emr_cli, "_client", recording_client)
    cluster_id = create_cluster(s3_bucket, capsys)

    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    config = resources.cluster
    assert cluster["Status"]["State"] == "WAITING"
    assert cluster["ReleaseLabel"] == config["release_label"]
    assert sorted(a["Name"] for a in cluster["Applications"]) == ["Hadoop", "Spark"]
    assert cluster["SecurityConfiguration"] == "fruits-emr-security"
    assert cluster["LogUri"] == f"s3://{s3_bucket}/fruits/emr-logs/"
    assert cluster["ServiceRole"] == "FruitsEmrServiceRole"
    assert cluster["Ec2InstanceAttributes"]["IamInstanceProfile"] == "FruitsEmrInstanceProfile"
    assert {t["Key"]: t["Value"] for t in cluster["Tags"]}["project"] == "fruits"
    by_class = {c["Classification"]: c for c in cluster["Configurations"]}
    python = "/opt/fruits-venv/bin/python"
    assert by_class["spark-env"]["Configurations"][0]["Properties"]["PYSPARK_PYTHON"] == python
    assert by_class["spark-defaults"]["Properties"]["spark.pyspark.python"] == python

    # The bootstrap action runs the uploaded script on the uploaded lock (every package pinned
    # and hashed), both this package's files, encrypted.
    (action,) = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert action["ScriptPath"] == f"s3://{s3_bucket}/fruits/emr-bootstrap/bootstrap.sh"
    assert action["Args"] == [f"s3://{s3_bucket}/fruits/emr-bootstrap/requirements.lock"]
    s3 = boto3.client("s3", region_name="eu-west-1")
    for name in ("bootstrap.sh", "requirements.lock"):
        key = f"fruits/emr-bootstrap/{name}"
        assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == (RESOURCES / name).read_bytes()
        assert s3.head_object(Bucket=s3_bucket, Key=key)["ServerSideEncryption"] == "AES256"

    # The security configuration: at-rest encryption with the KMS key, no in-transit without certs.
    security = json.loads(emr.describe_security_configuration(Name="fruits-emr-security")["SecurityConfiguration"])
    at_rest = security["EncryptionConfiguration"]["AtRestEncryptionConfiguration"]
    assert security["EncryptionConfiguration"]["EnableAtRestEncryption"] is True
    assert security["EncryptionConfiguration"]["EnableInTransitEncryption"] is False
    assert at_rest["S3EncryptionConfiguration"]["EncryptionMode"] == "SSE-S3"
    assert at_rest["LocalDiskEncryptionConfiguration"]["AwsKmsKey"].endswith(f":123456789012:key/{KMS_KEY}")
    assert at_rest["LocalDiskEncryptionConfiguration"]["AwsKmsKey"].startswith("arn:aws:kms:eu-west-1:")

    # What moto cannot show (ListInstanceFleets, GetAutoTerminationPolicy): the request sent.
    assert sent["AutoTerminationPolicy"] == {"IdleTimeout": config["idle_timeout_seconds"]}
    assert 60 <= config["idle_timeout_seconds"] <= 604_800  # the API's limits
    fleets = {f["InstanceFleetType"]: f for f in sent["Instances"]["InstanceFleets"]}
    assert set(fleets) == {fleet["type"] for fleet in config["instance_fleets"]}
    # The default: one on-demand primary that runs everything (a Spot reclaim of a lone primary
    # would end the run), with gp3 for YARN's local directories since it runs the executors.
    assert fleets["MASTER"]["TargetOnDemandCapacity"] == 1 and fleets["MASTER"]["TargetSpotCapacity"] == 0
    for kind, fleet in fleets.items():
        spot = fleet["TargetSpotCapacity"] > 0
        assert spot == ("SpotSpecification" in fleet["LaunchSpecifications"])
        if spot:  # never a Spot primary or core node: their loss ends the run (or its HDFS)
            assert kind == "TASK" and fleet["TargetOnDemandCapacity"] == 0
            assert fleet["LaunchSpecifications"]["SpotSpecification"]["TimeoutAction"] == "SWITCH_TO_ON_DEMAND"
        for type_config in fleet["InstanceTypeConfigs"]:
            runs_executors = kind != "MASTER" or set(fleets) == {"MASTER"}
            assert ("EbsConfiguration" in type_config) == runs_executors, type_config
    for fleet in fleets.values():
        types = [c["InstanceType"] for c in fleet["InstanceTypeConfigs"]]
        assert len(types) >= 2, f"{fleet['Name']} has no fallback instance type"
        # Graviton: the family letter is followed by a generation digit and "g" (m7g, c6g, m6gd).
        assert all(re.match(r"^[a-z]\d+g[a-z]*\.", t) for t in types), types
        assert all(t in resources.prices["instance_types"] for t in types), "a type has no price"


def create_tags_command(*resource_ids: str) -> str:
    return (
        f"aws ec2 create-tags --region eu-west-1 --resources {' '.join(resource_ids)} "
        "--tags Key=for-use-with-amazon-emr-managed-policies,Value=true"
    )


def test_create_refuses_an_untagged_vpc_and_says_the_command(moto_server, s3_bucket, emr, ec2, cli_env, capsys):
    """AmazonEMRServicePolicy_v2 (and iam/emr_service_role_policy.json) lets EMR launch only into
    subnets, and create its default security groups only in a VPC, tagged
    for-use-with-amazon-emr-managed-policies=true ("You must manually tag a VPC if you want Amazon
    EMR to create default security groups"). Tagging the subnets alone is not enough: `create`
    checks the VPC too, before anything is uploaded or started, and says the one command to run."""
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    before = emr.list_clusters()["Clusters"]
    create = ["create", "--bucket", s3_bucket, "--subnet-id", subnet]

    assert emr_cli.main(create) == 2
    assert create_tags_command(vpc, subnet) in capsys.readouterr().err
    ec2.create_tags(Resources=[subnet], Tags=[EMR_TAG])  # the subnets only, as the README said
    assert emr_cli.main(create) == 2
    err = capsys.readouterr().err
    assert create_tags_command(vpc) in err and "VPC" in err
    # An EMR security group left from an earlier cluster must carry the tag as well.
    group = ec2.create_security_group(GroupName="ElasticMapReduce-master", Description="old", VpcId=vpc)["GroupId"]
    ec2.create_tags(Resources=[vpc], Tags=[EMR_TAG])
    assert emr_cli.main(create) == 2
    assert create_tags_command(group) in capsys.readouterr().err
    assert emr.list_clusters()["Clusters"] == before, "nothing is started on an untagged network"
    assert not boto3.client("s3", region_name="eu-west-1").list_objects_v2(Bucket=s3_bucket).get("Contents")

    ec2.create_tags(Resources=[group], Tags=[EMR_TAG])
    assert emr_cli.main(create) == 0
    out = capsys.readouterr().out
    assert f"network: {vpc}" in out and "export FRUITS_EMR_CLUSTER_ID=" in out


def test_create_without_a_subnet_checks_the_default_vpc(moto_server, s3_bucket, emr, ec2, cli_env, capsys):
    """Without --subnet-id, EMR picks a subnet of the default VPC ("If EC2-Classic is not
    supported, and no Subnet is specified, Amazon EMR chooses the subnet for you": EMR API,
    Ec2InstanceAttributes): that VPC and each of its default subnets must carry the tag."""
    vpc, subnets = default_network(ec2)
    ec2.delete_tags(Resources=[vpc, *subnets], Tags=[{"Key": EMR_TAG["Key"]}])
    try:
        assert emr_cli.main(["create", "--bucket", s3_bucket]) == 2
        err = capsys.readouterr().err
        assert create_tags_command(vpc, *subnets) in err and "default VPC" in err
    finally:
        tag_default_network_for_emr("eu-west-1")
    assert emr_cli.main(["create", "--bucket", s3_bucket]) == 0


def test_terminate_ends_the_cluster(moto_server, s3_bucket, emr, cli_env, emr_network, capsys):
    cluster_id = create_cluster(s3_bucket, capsys)
    assert emr_cli.main(["terminate", "--cluster-id", cluster_id]) == 0
    assert emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] in ("TERMINATING", "TERMINATED")
    assert emr_cli.main(["status", "--cluster-id", cluster_id]) == 0
    assert re.search(r"state: TERMINAT", capsys.readouterr().out)


def test_a_non_eu_region_is_refused(moto_server, s3_bucket, emr, cli_env, capsys, monkeypatch):
    before = emr.list_clusters()["Clusters"]
    assert emr_cli.main(["create", "--bucket", s3_bucket, "--region", "us-east-1"]) == 2
    err = capsys.readouterr().err
    assert "Region 'us-east-1' refused" in err and "FRUITS_ALLOW_NON_EU_REGION" in err
    monkeypatch.setenv("FRUITS_AWS_REGION", "us-east-1")
    assert emr_cli.main(["create", "--bucket", s3_bucket]) == 2
    assert emr.list_clusters()["Clusters"] == before  # nothing created anywhere
    # The explicit override is honoured (the DPO agreed): the region reaches the request.
    monkeypatch.setenv("FRUITS_ALLOW_NON_EU_REGION", "1")
    args = emr_cli.parser().parse_args(["status", "--region", "us-east-1"])
    assert emr_cli._region(args) == "us-east-1"


def test_create_without_a_kms_key_says_what_to_set(moto_server, s3_bucket, cli_env, capsys, monkeypatch):
    monkeypatch.delenv("FRUITS_KMS_KEY_ID")
    assert emr_cli.main(["create", "--bucket", s3_bucket]) == 2
    assert "FRUITS_KMS_KEY_ID" in capsys.readouterr().err


def test_in_transit_encryption_only_with_certificates(resources):
    without = emr_cli.build_security_configuration(
        resources.security_configuration, "eu-west-1", "111122223333", KMS_KEY
    )
    assert without["EncryptionConfiguration"]["EnableInTransitEncryption"] is False
    assert "InTransitEncryptionConfiguration" not in without["EncryptionConfiguration"]
    certs = "s3://b/fruits/certs.zip"
    with_certs = emr_cli.build_security_configuration(
        resources.security_configuration, "eu-west-1", "111122223333", KMS_KEY, tls_certificates_uri=certs
    )
    tls = with_certs["EncryptionConfiguration"]["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"]
    assert with_certs["EncryptionConfiguration"]["EnableInTransitEncryption"] is True
    assert tls == {"CertificateProviderType": "PEM", "S3Object": certs}
    # The ARN form the security-configuration reference allows for S3Object works too.
    arn = emr_cli.build_security_configuration(
        resources.security_configuration,
        "eu-west-1",
        "111122223333",
        KMS_KEY,
        tls_certificates_uri="arn:aws:s3:::b/c.zip",
    )
    assert arn["EncryptionConfiguration"]["InTransitEncryptionConfiguration"]["TLSCertificateConfiguration"] == {
        "CertificateProviderType": "PEM",
        "S3Object": "arn:aws:s3:::b/c.zip",
    }


def test_create_says_why_in_transit_encryption_is_off(moto_server, s3_bucket, emr, cli_env, emr_network, capsys):
    """EMR on EC2 (emr-7.9.0 included) makes no TLS certificates itself: in-transit encryption
    takes a PEM zip on S3 or a custom certificate-provider JAR (EMR Management Guide, "Providing
    certificates for encrypting data in transit with Amazon EMR encryption"). Without
    --tls-certificates it stays off, and `create` says so, why, and what to pass; the zip must
    lie under the prefix, the only place the nodes may read."""
    assert emr_cli.main(["create", "--bucket", s3_bucket]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("in-transit encryption:")]
    assert "OFF" in line and "--tls-certificates" in line and emr_cli.IN_TRANSIT_CERTIFICATES_SOURCE in line
    outside = "s3://somewhere-else/certs.zip"
    assert emr_cli.main(["create", "--bucket", s3_bucket, "--tls-certificates", outside]) == 2
    assert f"s3://{s3_bucket}/fruits/" in capsys.readouterr().err
    # The security configuration without TLS exists now: EMR cannot update it, so `create` says
    # to delete it rather than start a cluster silently without in-transit encryption.
    inside = f"s3://{s3_bucket}/fruits/tls/certs.zip"
    assert emr_cli.main(["create", "--bucket", s3_bucket, "--tls-certificates", inside]) == 2
    assert "aws emr delete-security-configuration --name fruits-emr-security" in capsys.readouterr().err
    emr.delete_security_configuration(Name="fruits-emr-security")
    try:
        assert emr_cli.main(["create", "--bucket", s3_bucket, "--tls-certificates", inside]) == 0
        assert f"in-transit encryption: ON (PEM certificates {inside})" in capsys.readouterr().out
    finally:  # the other tests' clusters (and the emulation's) use the one without TLS
        emr.delete_security_configuration(Name="fruits-emr-security")


def test_staging_prefix_must_be_inside_the_prefix(moto_server, s3_bucket, cli_env, capsys, monkeypatch):
    """The instance profile may only touch ${PREFIX}/*: launcher staging elsewhere would fail on EMR."""
    monkeypatch.setenv("FRUITS_EMR_STAGING_PREFIX", "elsewhere/emr-staging")
    assert emr_cli.main(["create", "--bucket", s3_bucket]) == 2
    assert "outside FRUITS_S3_PREFIX" in capsys.readouterr().err


def test_launcher_stages_under_the_prefix_by_default(monkeypatch):
    from fruits_assets.emr_launcher import FruitsEmrStepLauncher
    from fruits_assets.settings import FruitsSettings

    monkeypatch.delenv("FRUITS_EMR_STAGING_PREFIX", raising=False)
    monkeypatch.setenv("FRUITS_S3_PREFIX", "team-a")
    settings = FruitsSettings(deployment="emr", s3_bucket="b", emr_cluster_id="j-X")
    assert FruitsEmrStepLauncher(settings).staging_prefix == "team-a/emr-staging"
    values = emr_cli.placeholder_values("b", "team-a", "eu-west-1")
    assert values["STAGING_PREFIX"] == "team-a/emr-staging"


def test_launcher_ships_only_what_the_cluster_must_see(monkeypatch):
    """The steps get the run's settings as their run config, without the host-only ones: the
    host's S3 endpoint (e.g. a VPC endpoint or a local server only the host reaches) would break
    every step, and the launcher's own knobs mean nothing there. Left out, a setting takes its
    default on the cluster, whose environment has no FRUITS_* variable."""
    from fruits_assets.emr_launcher import FruitsEmrStepLauncher
    from fruits_assets.settings import FruitsSettings

    for name in [f.json_schema_extra["env"] for f in FruitsSettings.model_fields.values()]:
        monkeypatch.delenv(name, raising=False)
    host = FruitsSettings(
        deployment="emr",
        s3_bucket="b",
        s3_prefix="team-a",
        emr_cluster_id="j-X",
        kms_key_id="k-1",
        image_size=96,
        s3_endpoint_url="http://127.0.0.1:9000",
        emr_poll_seconds=2.0,
        emr_wait_for_logs=True,
        spark_master="local[2]",
        output_root="/home/someone/fruits_output",
    )
    shipped = FruitsEmrStepLauncher(host).settings_config["config"]
    host_only = {
        "s3_endpoint_url",
        "emr_poll_seconds",
        "emr_wait_for_logs",
        "spark_master",
        "output_root",
        "model_cache",  # a host's folder; the cluster's is under the assets
    }
    assert FruitsSettings.host_only_fields() == host_only
    assert set(shipped) == set(FruitsSettings.model_fields) - host_only
    # What a run computes, and where it stores, travels: the step computes what the host planned.
    resolved = host.resolved()
    assert all(shipped[name] == getattr(resolved, name) for name in shipped)
    assert {"aws_region", "s3_bucket", "s3_prefix", "kms_key_id", "deployment", "image_size"} <= set(shipped)
    # On the cluster (no FRUITS_* variable), the step's settings resolve and validate, and boto3
    # takes AWS's endpoint.
    on_cluster = FruitsSettings(**shipped).resolve({})
    assert on_cluster.s3_endpoint_url == "" and on_cluster.image_size == 96 and on_cluster.kms_key_id == "k-1"


def test_the_emulated_network_reaches_only_eu_west_1(eu_west_1_network, s3_bucket, monkeypatch):
    """The EMR emulation's network (its host and steps have no AWS_ENDPOINT_URL): clients made for
    eu-west-1 reach the server through AWS's own URLs (virtual-hosted buckets included); a
    client made without a region is refused, as unreachable."""
    from botocore.exceptions import EndpointConnectionError

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # unreachable at once
    s3 = boto3.client("s3", region_name="eu-west-1")  # https://<bucket>.s3.eu-west-1.amazonaws.com
    s3.put_object(Bucket=s3_bucket, Key="a b/c.txt", Body=b"in Ireland")
    assert s3.get_object(Bucket=s3_bucket, Key="a b/c.txt")["Body"].read() == b"in Ireland"
    assert boto3.client("emr", region_name="eu-west-1").list_clusters()["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(EndpointConnectionError, match=r"s3\.amazonaws\.com"):
        boto3.client("s3").get_object(Bucket=s3_bucket, Key="a b/c.txt")  # no region: S3's global endpoint


def test_launcher_reads_step_logs_in_its_region(eu_west_1_network, s3_bucket, monkeypatch):
    """After a step (its logs, FRUITS_EMR_WAIT_FOR_LOGS=1, or a failed step's stderr) the host
    reads the step's logs from the cluster's LogUri. dagster-aws's job runner makes that S3 client
    without a region (us-east-1: S3's global endpoint, unreachable from a network that reaches
    only eu-west-1); the launcher reads them through the run's S3 connection, in its region."""
    from botocore.exceptions import EndpointConnectionError
    from dagster_aws.emr.emr import EmrJobRunner

    from fruits_assets.emr_launcher import FruitsEmrStepLauncher
    from fruits_assets.settings import FruitsSettings

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # unreachable at once
    key = "fruits/emr-logs/j-X/steps/s-1/stdout.gz"
    boto3.client("s3", region_name="eu-west-1").put_object(Bucket=s3_bucket, Key=key, Body=gzip.compress(b"hi"))
    log = logging.getLogger("test")
    with pytest.raises(EndpointConnectionError):
        EmrJobRunner(region="eu-west-1").wait_for_log(log, s3_bucket, key)
    settings = FruitsSettings(deployment="emr", s3_bucket=s3_bucket, emr_cluster_id="j-X", aws_region="eu-west-1")
    assert FruitsEmrStepLauncher(settings)._read_log(f"s3://{s3_bucket}/{key}") == "hi"


def test_placeholders_must_all_be_filled(resources):
    with pytest.raises(FruitsConfigError, match="--bucket"):
        emr_cli.build_run_job_flow_request(resources.cluster, "", "fruits")
    with pytest.raises(FruitsConfigError, match=r"\$\{NOPE\}"):
        emr_cli.fill_placeholders({"a": ["x-${NOPE}"]}, {})


def iam_documents() -> list[Path]:
    return sorted((RESOURCES / "iam").glob("*.json")) + [
        RESOURCES / "s3_bucket_policy.json",
        RESOURCES / "kms_key_policy.json",
    ]


@pytest.mark.parametrize("path", iam_documents(), ids=lambda p: p.name)
def test_policy_documents_are_least_privilege_json(path, tmp_path):
    document = json.loads(path.read_text())
    assert document["Version"] == "2012-10-17"
    for statement in document["Statement"]:
        actions = statement.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = statement.get("Resource", statement.get("NotResource", []))
        resources = [resources] if isinstance(resources, str) else resources
        if statement["Effect"] == "Allow":
            assert "s3:*" not in actions and "*" not in actions, statement
            if any(a.startswith("s3:") for a in actions):
                assert all(r.startswith("arn:aws:s3:::") for r in resources), statement
                assert not {"*", "arn:aws:s3:::*", "arn:aws:s3:::*/*"} & set(resources), statement
                assert all("${BUCKET}" in r or "elasticmapreduce" in r for r in resources), statement
        assert "AmazonElasticMapReduceforEC2Role" not in json.dumps(statement)


def test_bucket_policy_denies_plain_http_and_foreign_encryption_headers():
    """A PUT without an encryption header is allowed on purpose (`aws s3 sync` sends none, and S3
    encrypts it with the bucket's default, SSE-S3): test_emr_iam.py evaluates the requests."""
    statements = json.loads((RESOURCES / "s3_bucket_policy.json").read_text())["Statement"]
    assert all(s["Effect"] == "Deny" for s in statements)
    tls = [s for s in statements if s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"]
    assert tls and tls[0]["Action"] == "s3:*"
    headers = [s for s in statements if "s3:x-amz-server-side-encryption" in json.dumps(s.get("Condition", {}))]
    assert [s["Condition"]["Null"] for s in headers] == [{"s3:x-amz-server-side-encryption": "false"}]
    block = json.loads((RESOURCES / "public_access_block.json").read_text())
    assert block == {
        k: True for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    }


def test_render_fills_every_placeholder(resources, tmp_path, cli_env):
    written = emr_cli.main(
        ["render", "--bucket", "fruits-data", "--account-id", "111122223333", "--out-dir", str(tmp_path)]
    )
    assert written == 0
    for path in tmp_path.glob("*.json"):
        text = path.read_text()
        assert "${" not in text, path.name
        json.loads(text)
    policy = json.loads((tmp_path / "ec2_instance_profile_policy.json").read_text())
    resources_seen = [
        r for s in policy["Statement"] for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    ]
    assert "arn:aws:s3:::fruits-data/fruits/*" in resources_seen


def test_bootstrap_is_valid_bash():
    script = RESOURCES / "bootstrap.sh"
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "python3.11" in text and "/opt/fruits-venv" in text
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_bootstrap_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(RESOURCES / "bootstrap.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_release_spark_minor_matches_installed_pyspark(resources):
    import pyspark

    release = resources.cluster["release_label"]
    assert re.match(r"^emr-7\.\d+\.\d+$", release), "EMR 7.x ships Spark 3.5"
    cluster_spark = resources.cluster["spark_version"].split(".")[:2]
    assert pyspark.__version__.split(".")[:2] == cluster_spark


def test_no_aws_credentials_is_one_clear_line(tmp_path, capsys, monkeypatch):
    """`fruits-emr render` asks STS for the account id: without credentials, one line saying what
    to do, not botocore's traceback."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("boto3.DEFAULT_SESSION", None)  # a session of an earlier test keeps its credentials
    code = emr_cli.main(["render", "--bucket", "fruits-data", "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fruits-emr render: error: no AWS credentials found") and "Traceback" not in err, err
