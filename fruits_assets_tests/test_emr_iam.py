"""The IAM, KMS and bucket documents of emr_resources/ against the AWS rules a real cluster meets.

Static checks of the documents (and of the README's `aws iam` commands a newcomer copies): moto's
server does not evaluate IAM conditions or key policies for S3, EMR or EBS, so no local API could
show these. Each test names the AWS rule it checks; see emr_resources/README.md for the sources.
The operator's policy is checked against what `fruits-emr` really does: its commands run in this
process against moto's server, every AWS call is recorded, and each call's IAM authorization is
evaluated here against the policy.
"""

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from emr_resources.cli import fill_placeholders

PROJECT = Path(__file__).resolve().parents[1]
RESOURCES = PROJECT / "emr_resources"
VALUES = {
    "BUCKET": "fruits-data",
    "PREFIX": "fruits",
    "REGION": "eu-west-1",
    "ACCOUNT_ID": "111122223333",
    "KMS_KEY_ID": "1234abcd-12ab-34cd-56ef-1234567890ab",
    "STAGING_PREFIX": "fruits/emr-staging",
}
KEY_ARN = f"arn:aws:kms:eu-west-1:111122223333:key/{VALUES['KMS_KEY_ID']}"


def document(name: str) -> dict:
    return fill_placeholders(json.loads((RESOURCES / name).read_text()), VALUES)


def statements(name: str, effect: str = "Allow") -> list[dict]:
    return [s for s in document(name)["Statement"] if s["Effect"] == effect]


def as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value or [])


def allowed(name: str, action: str, resource: str) -> list[dict]:
    """The Allow statements of `name` granting `action` on exactly `resource`."""
    return [s for s in statements(name) if action in as_list(s["Action"]) and resource in as_list(s["Resource"])]


def instance_role() -> str:
    return yaml.safe_load((RESOURCES / "cluster.yaml").read_text())["job_flow_role"]


def test_instance_profile_and_its_role_have_the_same_name():
    """EMR, 'Customize IAM roles': with a custom EC2 instance profile, the instance profile and the
    role inside it must have the same name, or cluster creation fails (invalid instance profile)."""
    name = instance_role()
    role_arn = f"arn:aws:iam::111122223333:role/{name}"
    [pass_role] = [s for s in statements("iam/emr_service_role_policy.json") if "iam:PassRole" in as_list(s["Action"])]
    assert as_list(pass_role["Resource"]) == [role_arn]
    key_users = [p for s in statements("kms_key_policy.json") for p in as_list(s["Principal"]["AWS"])]
    assert role_arn in key_users
    # The README's commands create exactly that role, that profile, and put one in the other.
    readme = (PROJECT / "README.md").read_text()
    roles = set(re.findall(r"aws iam create-role --role-name (\S+)", readme))
    profiles = re.findall(r"aws iam create-instance-profile --instance-profile-name (\S+)", readme)
    added = re.findall(
        r"aws iam add-role-to-instance-profile --instance-profile-name (\S+) \\?\s*--role-name (\S+)", readme
    )
    assert profiles == [name] and added == [(name, name)] and name in roles
    assert re.findall(r"--role-name (\S+) --policy-name fruits-emr-instance", readme) == [name]


def test_the_cluster_may_list_the_bucket_so_a_missing_key_is_a_404():
    """S3, HeadObject/GetObject: without s3:ListBucket on the bucket, a missing key answers 403
    AccessDenied instead of 404. EMRFS and dagster-aws's launcher (it polls events.pkl and waits
    while the answer is NoSuchKey) rely on the 404: ListBucket must not hang on an s3:prefix
    condition, which a HEAD or GET request does not carry."""
    [grant] = allowed("iam/ec2_instance_profile_policy.json", "s3:ListBucket", "arn:aws:s3:::fruits-data")
    assert "s3:prefix" not in json.dumps(grant.get("Condition", {}))
    # Objects stay limited to the prefix.
    writes = allowed("iam/ec2_instance_profile_policy.json", "s3:PutObject", "arn:aws:s3:::fruits-data/fruits/*")
    assert writes and all(
        r.startswith("arn:aws:s3:::fruits-data/fruits/")
        for s in statements("iam/ec2_instance_profile_policy.json")
        if "s3:PutObject" in as_list(s["Action"])
        for r in as_list(s["Resource"])
    )


def test_the_host_may_cancel_the_steps_it_submits():
    """EMR API, CancelSteps: the step launcher cancels the EMR step of a run that is terminated or
    interrupted (emr_launcher.py, `_cancel_step`); without elasticmapreduce:CancelSteps the call is
    denied and the step keeps running, billed, ahead of the next run's steps. It is granted on the
    same clusters as the calls that submit and watch steps: those tagged project=fruits."""
    clusters = "arn:aws:elasticmapreduce:eu-west-1:111122223333:cluster/*"
    [grant] = allowed("iam/dagster_host_policy.json", "elasticmapreduce:CancelSteps", clusters)
    launcher_calls = {"AddJobFlowSteps", "DescribeStep", "DescribeCluster", "CancelSteps"}
    assert set(as_list(grant["Action"])) == {f"elasticmapreduce:{call}" for call in launcher_calls}
    assert grant["Condition"] == {"StringEquals": {"aws:ResourceTag/project": "fruits"}}


def test_the_kms_key_encrypts_the_cluster_disks():
    """EMR local-disk encryption with EBS encryption and a customer managed key: the EMR service
    role and the instance role are key users (Encrypt, Decrypt, ReEncrypt*, GenerateDataKey*,
    DescribeKey), and the service role may create grants for AWS resources (EBS volumes)."""
    crypto = {"kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"}
    for policy in ("iam/ec2_instance_profile_policy.json", "iam/emr_service_role_policy.json"):
        granted = {a for s in statements(policy) if KEY_ARN in as_list(s["Resource"]) for a in as_list(s["Action"])}
        assert crypto <= granted, (policy, crypto - granted)
    [grants] = [s for s in statements("iam/emr_service_role_policy.json") if "kms:CreateGrant" in as_list(s["Action"])]
    assert grants["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}
    key_policy = {s["Sid"]: s for s in statements("kms_key_policy.json")}
    assert key_policy["FruitsEmrServiceRoleAttachesTheKeyToEbsVolumes"]["Condition"] == grants["Condition"]


def test_the_service_role_launches_and_tags_only_tagged_resources():
    """AmazonEMRServicePolicy_v2's rule: EC2 create/modify actions are scoped by tags (on the
    request or on the resource), never granted on every resource."""
    risky = {
        "ec2:RunInstances",
        "ec2:CreateFleet",
        "ec2:CreateTags",
        "ec2:CreateLaunchTemplate",
        "ec2:CreateNetworkInterface",
        "ec2:CreateSecurityGroup",
        "ec2:TerminateInstances",
        "ec2:ModifyInstanceAttribute",
        "ec2:DeleteTags",
    }
    for statement in statements("iam/emr_service_role_policy.json"):
        actions = risky & set(as_list(statement["Action"]))
        if not actions:
            continue
        tag_condition = re.search(
            r"aws:(Request|Resource)Tag/|ec2:CreateAction", json.dumps(statement.get("Condition", {}))
        )
        if "*" in as_list(statement["Resource"]):
            assert tag_condition, (statement["Sid"], actions)
        else:
            # Without a tag condition: only the parts a launch needs (AMIs, key pairs, the fleet,
            # the capacity it may use) and EMR's own placement groups (named EMR_*), as in the
            # managed policy's ResourcesToLaunchEC2 and TagPlacementGroups.
            assert tag_condition or all(
                re.search(
                    r":(image|key-pair|capacity-reservation|fleet|network-interface|placement-group/EMR_|"
                    r"dedicated-host|group)/?",
                    r,
                )
                for r in as_list(statement["Resource"])
            ), statement["Sid"]


# -- the bucket policy, evaluated for the requests people and tools really send -------------------
def _matches(pattern: str, value: str) -> bool:
    """IAM's wildcards in Action/Resource and *Like conditions: `*` any run, `?` one character."""
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value) is not None


def _condition_holds(operator: str, key: str, wanted, context: dict) -> bool:
    """The condition operators the bucket policy uses, as IAM evaluates them (a key absent from
    the request fails every operator but Null). An unknown operator fails the test, so a new
    statement cannot slip past this evaluator."""
    wanted = as_list(wanted)
    present = key in context
    if operator == "Null":
        return str(not present).lower() in [str(w).lower() for w in wanted]
    if not present:  # IAM User Guide, "Condition operators": a negated operator then holds
        return operator.endswith("IfExists") or "Not" in operator
    value = context[key]
    if operator == "Bool":
        return str(value).lower() in [str(w).lower() for w in wanted]
    if operator == "StringEquals":
        return value in wanted
    if operator == "StringNotEquals":
        return value not in wanted
    if operator == "ArnNotLike":
        return not any(_matches(w, value) for w in wanted)
    raise AssertionError(f"the test's evaluator does not know the condition operator {operator}")


def denied_by(policy: str, action: str, resource: str, context: dict) -> list[str]:
    """The Sids of `policy`'s Deny statements that apply to the request (Principal "*" only)."""
    found = []
    for statement in statements(policy, "Deny"):
        assert statement["Principal"] == "*", statement["Sid"]
        if not any(_matches(a, action) for a in as_list(statement["Action"])):
            continue
        if "Resource" in statement and not any(_matches(r, resource) for r in as_list(statement["Resource"])):
            continue
        if "NotResource" in statement and any(_matches(r, resource) for r in as_list(statement["NotResource"])):
            continue
        conditions = statement.get("Condition", {})
        if all(
            _condition_holds(operator, key, wanted, context)
            for operator, pairs in conditions.items()
            for key, wanted in pairs.items()
        ):
            found.append(statement["Sid"])
    return found


def test_plain_aws_s3_sync_of_the_photos_and_weights_is_not_denied():
    """`aws s3 sync` / `aws s3 cp` (README: 'Upload the photos and the weights') send no
    x-amz-server-side-encryption header unless given --sse. S3 encrypts every new object with
    SSE-S3 anyway (since 2023-01-05; here also the bucket's default encryption), so the bucket
    policy must not deny such a PUT from an administrator: the uploads would fail with 403."""
    user = {"aws:SecureTransport": "true", "aws:PrincipalArn": "arn:aws:iam::111122223333:user/data-scientist"}
    for key in ("fruits/images/Training/Apple Red 1/0_100.jpg", "fruits/models/mobilenet_v2.weights.h5"):
        resource = f"arn:aws:s3:::fruits-data/{key}"
        assert denied_by("s3_bucket_policy.json", "s3:PutObject", resource, user) == [], key
        with_sse = {**user, "s3:x-amz-server-side-encryption": "AES256"}
        assert denied_by("s3_bucket_policy.json", "s3:PutObject", resource, with_sse) == [], key
    # What the policy still refuses: plain HTTP, and an encryption header other than S3's or KMS's.
    resource = "arn:aws:s3:::fruits-data/fruits/images/a.jpg"
    assert denied_by("s3_bucket_policy.json", "s3:GetObject", resource, {**user, "aws:SecureTransport": "false"})
    foreign = {**user, "s3:x-amz-server-side-encryption": "something-else"}
    assert denied_by("s3_bucket_policy.json", "s3:PutObject", resource, foreign)
    # And every object lands encrypted: the bucket's default encryption is SSE-S3.
    rule = document("bucket_encryption.json")["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert rule["SSEAlgorithm"] == "AES256"


# -- the service role policy against the AWS managed policy it mirrors ----------------------------
MANAGED_SERVICE_POLICY = "AmazonEMRServicePolicy_v2"
# Statements of the managed policy that the Fruits! service role leaves out, and why (README,
# emr_resources/README.md). Every other statement's actions must be granted, narrowed.
LEFT_OUT = {
    "AutoScaling": "no automatic scaling policy: the fleets have fixed targets",
    "AutoScalingCloudWatch": "no automatic scaling policy, so no scaling alarms",
    "PassRoleForAutoScaling": "no automatic scaling role (EMR_AutoScaling_DefaultRole)",
    "PassRoleForEC2": "replaced by PassOnlyTheFruitsInstanceRole (the nodes' role has its own name)",
}


def managed_service_policy() -> dict:
    """AmazonEMRServicePolicy_v2's default version as moto ships it (moto keeps a copy of the AWS
    managed policies; 5.2.5 has v6 of 2026-02-12, the one the AWS Managed Policy Reference shows)."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    return json.loads(aws_managed_policies_data)[MANAGED_SERVICE_POLICY]


def resource_type(arn: str) -> str:
    """`arn:aws:ec2:*:*:subnet/*` -> `ec2:subnet/*` (what a statement is about, wherever)."""
    if arn == "*":
        return "*"
    parts = arn.split(":", 5)
    return f"{parts[2]}:{parts[5]}"


def test_service_role_policy_mirrors_the_managed_policy_version_it_names():
    """iam/emr_service_role_policy.json is a narrowed copy of AmazonEMRServicePolicy_v2 (region,
    account, the instance role, project=fruits tags): its Id names the managed version it mirrors,
    and every action of that version is granted on the same kind of resource, unless LEFT_OUT says
    why not. When AWS publishes a new version (or moto ships it), this fails: refresh the copy as
    emr_resources/README.md says and bump the Id."""
    ours = document("iam/emr_service_role_policy.json")
    managed = managed_service_policy()
    match = re.fullmatch(rf"{MANAGED_SERVICE_POLICY}-(v\d+)-(\d{{4}}-\d\d-\d\d)-narrowed-for-fruits", ours["Id"])
    assert match, ours["Id"]
    assert match.group(1) == managed["DefaultVersionId"], (
        f"AWS's {MANAGED_SERVICE_POLICY} is {managed['DefaultVersionId']} ({managed['UpdateDate']}); "
        f"the copy mirrors {match.group(1)}: refresh it"
    )
    assert match.group(2) == managed["UpdateDate"][:10]
    granted = {
        (action, resource_type(resource))
        for statement in ours["Statement"]
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }
    missing = {}
    for statement in managed["Document"]["Statement"]:
        if statement["Sid"] in LEFT_OUT:
            continue
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                # A managed "*" may be narrowed to one kind of resource; any other must match.
                kinds = {kind for granted_action, kind in granted if granted_action == action}
                if not (kinds if resource == "*" else kinds & {resource_type(resource), "*"}):
                    missing.setdefault(statement["Sid"], []).append(f"{action} on {resource}")
    assert not missing, f"managed statements the copy does not grant (port them, narrowed, or LEFT_OUT): {missing}"
    # Narrowed: every ARN names this region and account (or is AWS's own AMIs).
    for statement in statements("iam/emr_service_role_policy.json"):
        for resource in as_list(statement["Resource"]):
            assert resource == "*" or ":eu-west-1:" in resource or resource.startswith("arn:aws:iam::111122223333:")
            assert resource == "*" or "111122223333" in resource or "::image/" in resource, resource


# -- the operator's policy against the calls `fruits-emr` really makes ----------------------------
OPERATOR_POLICY = "iam/operator_policy.json"
OPERATOR_KMS_KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"
# The actions the Service Authorization Reference lists without a resource type ("you must specify
# all resources ('*')"): EC2's Describe* calls, EMR's RunJobFlow (request tags only) and its
# security configurations. Every other action is granted on named ARNs.
NO_RESOURCE_LEVEL = {
    "ec2:DescribeVpcs",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
    "elasticmapreduce:RunJobFlow",
    "elasticmapreduce:CreateSecurityConfiguration",
    "elasticmapreduce:DescribeSecurityConfiguration",
}
MANAGED_CREATOR_POLICY = "AmazonEMRFullAccessPolicy_v2"  # AWS's policy for who creates EMR clusters


def managed_creator_statements() -> dict[str, dict]:
    """AmazonEMRFullAccessPolicy_v2 as moto ships it, by Sid: AWS's own word on which service each
    role is passed to when a cluster is created, and on EMR's cleanup service-linked role."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    policy = json.loads(aws_managed_policies_data)[MANAGED_CREATOR_POLICY]
    return {s["Sid"]: s for s in policy["Document"]["Statement"]}


def passed_to_service(sid: str) -> str:
    """The service principal a managed PassRole statement names (`ec2.amazonaws.com*` ->
    `ec2.amazonaws.com`: the `*` only adds the China partition's `.com.cn`)."""
    [(operator, keys)] = managed_creator_statements()[sid]["Condition"].items()
    assert operator == "StringLike", operator
    return keys["iam:PassedToService"].removesuffix("*")


def test_the_operator_passes_only_the_two_cluster_roles_and_grants_no_wildcard_action():
    """RunJobFlow's one dependent action is iam:PassRole (Service Authorization Reference,
    elasticmapreduce): the operator passes the service role to EMR and the instance profile's role
    to EC2, exactly as AWS's AmazonEMRFullAccessPolicy_v2 scopes them (PassRoleForElasticMapReduce,
    PassRoleForEC2), and only cluster.yaml's two roles: `--service-role`/`--job-flow-role` with
    another name are refused. Its only other IAM action is the one AWS's policy also grants: EMR
    creating its cleanup service-linked role with the account's first cluster. No `*` action,
    no `iam:*`, no service-wide wildcard."""
    cluster = yaml.safe_load((RESOURCES / "cluster.yaml").read_text())
    role = "arn:aws:iam::111122223333:role/{}".format
    passes = [s for s in statements(OPERATOR_POLICY) if "iam:PassRole" in as_list(s["Action"])]
    assert {(r, json.dumps(s["Condition"])) for s in passes for r in as_list(s["Resource"])} == {
        (
            role(cluster["service_role"]),
            json.dumps({"StringEquals": {"iam:PassedToService": passed_to_service("PassRoleForElasticMapReduce")}}),
        ),
        (
            role(cluster["job_flow_role"]),
            json.dumps({"StringEquals": {"iam:PassedToService": passed_to_service("PassRoleForEC2")}}),
        ),
    }
    assert all(as_list(s["Action"]) == ["iam:PassRole"] for s in passes)
    [linked] = [s for s in statements(OPERATOR_POLICY) if "iam:CreateServiceLinkedRole" in as_list(s["Action"])]
    managed = managed_creator_statements()["ElasticMapReduceServiceLinkedRole"]
    assert _matches(managed["Resource"].replace("arn:aws:iam::*:", "arn:aws:iam::111122223333:"), linked["Resource"])
    assert linked["Resource"].endswith(
        ":role/aws-service-role/elasticmapreduce.amazonaws.com/AWSServiceRoleForEMRCleanup"
    )
    assert linked["Condition"] == {"StringEquals": {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com"}}
    assert "elasticmapreduce.amazonaws.com" in managed["Condition"]["StringEquals"]["iam:AWSServiceName"]
    iam_actions = {a for s in statements(OPERATOR_POLICY) for a in as_list(s["Action"]) if a.startswith("iam:")}
    assert iam_actions == {"iam:PassRole", "iam:CreateServiceLinkedRole"}
    assert not statements(OPERATOR_POLICY, "Deny")
    for statement in statements(OPERATOR_POLICY):
        assert "NotAction" not in statement and "NotResource" not in statement, statement["Sid"]
        assert all("*" not in action for action in as_list(statement["Action"])), statement["Sid"]
        if "*" in as_list(statement["Resource"]):  # only where IAM offers nothing narrower, and conditioned
            assert set(as_list(statement["Action"])) <= NO_RESOURCE_LEVEL and statement.get("Condition"), statement


def test_the_readme_attaches_the_operator_and_host_policies_to_whoever_runs_fruits_emr():
    """README step 1: the operator (a person's role or CI's) gets both managed policies, the
    lifecycle one and the host's (`fruits-emr run` runs `dagster asset materialize`, whose calls
    dagster_host_policy.json grants), from the files `fruits-emr render` fills."""
    readme = (PROJECT / "README.md").read_text()
    created = dict(
        (document_name, name)
        for name, document_name in re.findall(
            r"aws iam create-policy --policy-name (\S+) \\?\s*--policy-document file:///tmp/fruits-iam/(\S+\.json)",
            readme,
        )
    )
    assert set(created) >= {"operator_policy.json", "dagster_host_policy.json"}, created
    attached = re.findall(
        r"aws iam attach-role-policy --role-name (\S+) \\?\s*--policy-arn \S+:policy/(\S+?)\"?\s", readme
    )
    principals = {
        role
        for role, name in attached
        if name in (created["operator_policy.json"], created["dagster_host_policy.json"])
    }
    names = {name for _, name in attached}
    assert len(principals) == 1 and {created["operator_policy.json"], created["dagster_host_policy.json"]} <= names, (
        attached
    )


@dataclass
class AwsCall:
    service: str  # botocore's service name: "emr", "s3", "ec2", "sts"
    operation: str
    params: dict
    region: str


@contextlib.contextmanager
def recorded_aws_calls():
    """Every AWS operation any botocore client of this process makes inside the block.

    Recorded at `BaseClient._make_api_call`, which every generated client method goes through
    whatever session made the client (boto3's default one in `_client` and `Storage`, or any
    other), before the request is sent: a call AWS would refuse is recorded like one it answers."""
    from botocore.client import BaseClient

    calls: list[AwsCall] = []
    original = BaseClient._make_api_call

    def make_api_call(client, operation_name, api_params):
        calls.append(
            AwsCall(client.meta.service_model.service_name, operation_name, dict(api_params), client.meta.region_name)
        )
        return original(client, operation_name, api_params)

    BaseClient._make_api_call = make_api_call
    try:
        yield calls
    finally:
        BaseClient._make_api_call = original


@dataclass(frozen=True)
class Request:
    """One IAM authorization AWS makes for a call: the action, on a resource, with its context."""

    action: str
    resource: str
    context: tuple  # sorted (key, value) pairs

    def __str__(self):
        return f"{self.action} on {self.resource} with {dict(self.context)}"


def iam_requests(call: AwsCall, account: str, cluster_tags: dict[str, dict]) -> list[Request]:
    """What AWS authorizes for `call` (the Service Authorization Reference's action, resource type
    and condition keys). An operation not listed here fails the test: map it, then grant it."""
    region, params = call.region, call.params

    def request(action: str, resource: str, **context) -> Request:
        return Request(action, resource, tuple(sorted(context.items())))

    def cluster(cluster_id: str, action: str) -> Request:
        tags = {f"aws:ResourceTag/{k}": v for k, v in cluster_tags[cluster_id].items()}
        return request(action, f"arn:aws:elasticmapreduce:{region}:{account}:cluster/{cluster_id}", **tags)

    regional = {"aws:RequestedRegion": region}
    match call.service, call.operation:
        case "sts", "GetCallerIdentity":
            # "No permissions are required to perform this operation" (STS API Reference).
            return []
        case "ec2", ("DescribeVpcs" | "DescribeSubnets" | "DescribeSecurityGroups"):
            return [request(f"ec2:{call.operation}", "*", **regional)]
        case "s3", "PutObject":
            put = request("s3:PutObject", f"arn:aws:s3:::{params['Bucket']}/{params['Key']}")
            if params.get("ServerSideEncryption") != "aws:kms":
                return [put]
            # S3 asks KMS for a data key on the caller's behalf (S3 User Guide, SSE-KMS permissions).
            key = params["SSEKMSKeyId"]
            key_arn = key if key.startswith("arn:") else f"arn:aws:kms:{region}:{account}:key/{key}"
            return [put, request("kms:GenerateDataKey", key_arn, **{"kms:ViaService": f"s3.{region}.amazonaws.com"})]
        case "s3", ("GetObject" | "HeadObject"):
            return [request("s3:GetObject", f"arn:aws:s3:::{params['Bucket']}/{params['Key']}")]
        case "s3", "ListObjectsV2":
            return [request("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}")]
        case "emr", ("DescribeSecurityConfiguration" | "CreateSecurityConfiguration"):
            return [request(f"elasticmapreduce:{call.operation}", "*", **regional)]
        case "emr", "RunJobFlow":
            tags = {f"aws:RequestTag/{tag['Key']}": tag["Value"] for tag in params.get("Tags", [])}
            role = f"arn:aws:iam::{account}:role/{{}}".format
            service_linked = managed_creator_statements()["ElasticMapReduceServiceLinkedRole"]
            return [
                request("elasticmapreduce:RunJobFlow", "*", **regional, **tags),
                request(
                    "iam:PassRole",
                    role(params["ServiceRole"]),
                    **{"iam:PassedToService": passed_to_service("PassRoleForElasticMapReduce")},
                ),
                # JobFlowRole names the instance profile; the role in it has the same name (EMR's
                # rule, test_instance_profile_and_its_role_have_the_same_name).
                request(
                    "iam:PassRole",
                    role(params["JobFlowRole"]),
                    **{"iam:PassedToService": passed_to_service("PassRoleForEC2")},
                ),
                # EMR creates AWSServiceRoleForEMRCleanup with the account's first cluster, with
                # the caller's permission (EMR Management Guide, "Using service-linked roles").
                request(
                    "iam:CreateServiceLinkedRole",
                    role("aws-service-role/elasticmapreduce.amazonaws.com/AWSServiceRoleForEMRCleanup"),
                    **{"iam:AWSServiceName": service_linked["Condition"]["StringEquals"]["iam:AWSServiceName"][0]},
                ),
            ]
        case "emr", "DescribeCluster":
            return [cluster(params["ClusterId"], "elasticmapreduce:DescribeCluster")]
        case "emr", "TerminateJobFlows":
            return [cluster(cluster_id, "elasticmapreduce:TerminateJobFlows") for cluster_id in params["JobFlowIds"]]
    raise AssertionError(f"no IAM mapping for {call.service}:{call.operation}: add it to iam_requests, then grant it")


def granting(policy: dict, request: Request) -> list[str]:
    """The Sids of the policy's Allow statements that grant `request` (IAM's wildcards in Action
    and Resource; every condition must hold in the request's context)."""
    context = dict(request.context)
    return [
        statement["Sid"]
        for statement in policy["Statement"]
        if statement["Effect"] == "Allow"
        and any(_matches(a, request.action) for a in as_list(statement["Action"]))
        and any(_matches(r, request.resource) for r in as_list(statement["Resource"]))
        and all(
            _condition_holds(operator, key, wanted, context)
            for operator, pairs in statement.get("Condition", {}).items()
            for key, wanted in pairs.items()
        )
    ]


def test_the_operator_policy_grants_every_call_of_the_fruits_emr_commands_and_nothing_else(
    moto_server, s3_bucket, tmp_path, capsys, monkeypatch
):
    """`fruits-emr create` (SSE-S3 and --s3-kms), `status`, `terminate`, `run`, `cost`, `lock` and
    `render`, run in this process against moto with every AWS call recorded: each call's IAM
    authorization is granted by operator_policy.json alone, on a matching resource, with its
    conditions met (project=fruits tags, the region, the roles' services, S3 as the KMS caller),
    and every statement of the policy is needed by some call. `run`'s `dagster asset materialize`
    (its own process, stubbed here) needs dagster_host_policy.json, attached beside it."""
    import boto3

    from emr_resources import cli as emr_cli
    from fruits_assets_tests.emr_emulation import tag_default_network_for_emr

    for name in ("FRUITS_AWS_REGION", "FRUITS_ALLOW_NON_EU_REGION", "FRUITS_S3_PREFIX", "FRUITS_EMR_CLUSTER_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRUITS_KMS_KEY_ID", OPERATOR_KMS_KEY)
    tag_default_network_for_emr("eu-west-1")
    emr = boto3.client("emr", region_name="eu-west-1")
    account = boto3.client("sts", region_name="eu-west-1").get_caller_identity()["Account"]
    security = yaml.safe_load((RESOURCES / "cluster.yaml").read_text())["security_configuration"]

    def fresh_security_configuration():
        """Absent, so `create` creates it (moto's server is the session's: another test's may be there)."""
        with contextlib.suppress(emr.exceptions.ClientError):
            emr.delete_security_configuration(Name=security)

    materialized = []
    monkeypatch.setattr(emr_cli, "materialize_on", lambda cluster_id, *_: materialized.append(cluster_id) or 0)
    monkeypatch.setattr(emr_cli, "uv_executable", lambda: ["true"])  # `lock` without uv: what it calls, not PyPI
    quick = ["--poll-seconds", "0.05", "--timeout", "30"]
    commands = {}

    def run(name: str, argv: list[str]) -> str:
        with recorded_aws_calls() as calls:
            assert emr_cli.main(argv) == 0, capsys.readouterr()
        commands[name] = calls
        return capsys.readouterr().out

    def created(out: str) -> str:
        return re.search(r"^export FRUITS_EMR_CLUSTER_ID=(j-\w+)$", out, re.MULTILINE).group(1)

    try:
        fresh_security_configuration()
        kms_cluster = created(run("create --s3-kms", ["create", "--bucket", s3_bucket, "--s3-kms", "--wait", *quick]))
        run("terminate", ["terminate", "--cluster-id", kms_cluster])
        fresh_security_configuration()
        cluster = created(run("create", ["create", "--bucket", s3_bucket, "--wait", *quick]))
        run("status", ["status", "--cluster-id", cluster])
        run("terminate --cluster-id", ["terminate", "--cluster-id", cluster])
        run("run", ["run", "--bucket", s3_bucket, *quick])
        run("cost", ["cost", "--json"])
        run("lock", ["lock"])
        run("render", ["render", "--bucket", s3_bucket, "--out-dir", str(tmp_path / "iam")])
    finally:
        fresh_security_configuration()  # the next `create` of the session makes the default one again
    assert len(materialized) == 1

    # The recorder saw what each command does (so the checks below cannot pass on nothing).
    operations = {name: {f"{c.service}:{c.operation}" for c in calls} for name, calls in commands.items()}
    lifecycle = {
        "sts:GetCallerIdentity",
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "s3:PutObject",
        "emr:DescribeSecurityConfiguration",
        "emr:CreateSecurityConfiguration",
        "emr:RunJobFlow",
        "emr:DescribeCluster",
    }
    assert operations["create"] == operations["create --s3-kms"] == lifecycle, operations
    assert operations["run"] == (lifecycle | {"emr:TerminateJobFlows"}) - {"emr:CreateSecurityConfiguration"}
    assert operations["status"] == {"emr:DescribeCluster"}
    assert operations["terminate"] == {"emr:TerminateJobFlows", "emr:DescribeCluster"}
    assert operations["cost"] == operations["lock"] == set() and operations["render"] == {"sts:GetCallerIdentity"}
    kms_puts = [c for c in commands["create --s3-kms"] if c.operation == "PutObject"]
    assert len(kms_puts) == 2 and all(c.params["ServerSideEncryption"] == "aws:kms" for c in kms_puts)

    clusters = {c.params["ClusterId"] for calls in commands.values() for c in calls if c.operation == "DescribeCluster"}
    tags = {
        cid: {t["Key"]: t["Value"] for t in emr.describe_cluster(ClusterId=cid)["Cluster"]["Tags"]} for cid in clusters
    }
    values = {
        "BUCKET": s3_bucket,
        "PREFIX": "fruits",
        "REGION": "eu-west-1",
        "ACCOUNT_ID": account,
        "KMS_KEY_ID": OPERATOR_KMS_KEY,
        "STAGING_PREFIX": "fruits/emr-staging",
    }
    policy = fill_placeholders(json.loads((RESOURCES / OPERATOR_POLICY).read_text()), values)
    denied, used = [], set()
    for name, calls in commands.items():
        for call in calls:
            for request in iam_requests(call, account, tags):
                sids = granting(policy, request)
                used.update(sids)
                if not sids:
                    denied.append(f"fruits-emr {name}: {call.service}:{call.operation} needs {request}")
    assert not denied, "operator_policy.json does not grant:\n" + "\n".join(denied)
    unused = {s["Sid"] for s in policy["Statement"]} - used
    assert not unused, f"statements no command needs (least privilege: remove them): {unused}"
