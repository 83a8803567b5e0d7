"""The IAM, KMS and bucket documents of emr_resources/ against the AWS rules a real cluster meets.

Static checks of the documents (and of the README's `aws iam` commands a newcomer copies): moto's
server does not evaluate IAM conditions or key policies for S3, EMR or EBS, so no local API could
show these. Each test names the AWS rule it checks; see emr_resources/README.md for the sources.
"""

import json
import re
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
