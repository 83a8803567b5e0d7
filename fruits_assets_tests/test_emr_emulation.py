"""The whole graph in the `emr` deployment, on an emulated EMR cluster.

The host is the real CLI - `dagster asset materialize -m fruits_assets.definitions --select '*'` -
in its own process, with FRUITS_DEPLOYMENT=emr, what a user has in their environment (AWS
credentials and the FRUITS_* settings of README's EMR section; no AWS region variable, no
endpoint), and neither Java nor JAVA_HOME: it only plans the run, stages and submits each Spark
step (6 assets, 4 checks) to EMR and streams the steps' events back from S3; the two steps without
Spark (`pca_quality`, the PCA target check) run on it. Its boto3 clients reach AWS's eu-west-1
endpoints, which lead to moto's server (the emulated network: a client made without the region
fails as unreachable). The cluster was made by `fruits-emr create` (moto's EMR) and its steps are
run by `emr_emulation.EmulatedEmrCluster`: each as its own spark-submit process (the driver), with
the cluster's environment and Python only, `fruits_assets` importable only from the staged zip, on
a Spark standalone cluster of two workers started once for this module (executors in their own
processes, on both workers, for every step, and the drivers' disk hidden from the workers:
asserted), and s3:// served by a real Hadoop S3
connector against moto's S3 (see that module's docstring for what the emulation covers and what
only a real cluster can show).

The result is checked against the local deployment on the same images: the CSV on S3 equals the
local CSV to 1e-4. Then images are added, changed and deleted on S3 and the second run is the
transient path, `fruits-emr run`: it creates a cluster of its own, runs the same command on it
and terminates it once the run succeeded (failure and interrupt: test_emr_run.py). It runs with
a KMS key (FRUITS_KMS_KEY_ID: SSE-KMS for what boto3 writes, the host's staged steps included)
and the driver's logs fetched back (FRUITS_EMR_WAIT_FOR_LOGS=1): the steps on the new cluster
reuse the stored arrays and vectors of the unchanged images (incremental runs work the same on
EMR, across clusters), and the CSV still equals a local run on the final images.
"""

import io
import os
import re
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pandas as pd
import pytest

from emr_resources import cli as emr_cli
from fruits_assets.sample_data import generate_sample
from fruits_assets_tests.aws_network import emulated_aws_network as aws_network
from fruits_assets_tests.emr_emulation import (
    EmulatedEmrCluster,
    EmulationUnavailable,
    StandaloneSpark,
    cluster_python,
    java_home,
    moto_emr_backends,
    s3a_jars,
    tag_default_network_for_emr,
)
from fruits_assets_tests.helpers import latest_run_id, latest_run_metadata, materialize, run_config

pytestmark = [pytest.mark.slow, pytest.mark.long]

PROJECT = Path(__file__).resolve().parents[1]
PREFIX = "fruits"
SPARK_STEPS = {
    "raw_images",
    "preprocessed_images",
    "rejected_images",
    "image_features",
    "pca_model",
    "pca_features_csv",
    "raw_images_training_covers_test_labels",
    "preprocessed_images_counts_reconcile",
    "image_features_vectors_complete_and_finite",
    "pca_features_csv_csv_matches_features",
}


@pytest.fixture(scope="module")
def emulation_ready():
    """The cluster's venv and the S3 connector (built or downloaded once, then cached)."""
    try:
        return cluster_python(), s3a_jars(), java_home()
    except EmulationUnavailable as error:
        if os.environ.get("FRUITS_REQUIRE_NETWORK_TESTS") == "1":
            pytest.fail(f"the EMR emulation cannot be set up: {error}")
        pytest.skip(f"the EMR emulation cannot be set up here: {error}")


@pytest.fixture(scope="module")
def standalone_spark(emulation_ready, moto_server, tmp_path_factory):
    """The cluster's Spark: a standalone master and two workers (1 core, 2 GiB each: two 1-core
    executors fit this 2-core machine) on loopback, for every step of this module; always
    stopped, its logs (and the executors') left in the test's temporary folder."""
    with StandaloneSpark(tmp_path_factory.mktemp("standalone-spark"), moto_server, workers=2) as spark:
        if not spark.hides_primary:
            warnings.warn("no `unshare` here: the workers see the primary node's disk", stacklevel=1)
        yield spark


def upload_tree(s3, folder: Path, bucket: str, prefix: str) -> int:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return len(files)


def create_cluster(bucket: str, kms_key: str, monkeypatch, capsys) -> str:
    monkeypatch.setenv("FRUITS_KMS_KEY_ID", kms_key)  # `create` needs one (the nodes' disks)
    tag_default_network_for_emr("eu-west-1")  # `create` checks the network's EMR tags
    assert emr_cli.main(["create", "--bucket", bucket, "--prefix", PREFIX]) == 0
    return re.search(r"^export FRUITS_EMR_CLUSTER_ID=(j-\w+)$", capsys.readouterr().out, re.M).group(1)


def host_environment(tmp_path: Path, endpoint: str, bucket: str, cluster_id: str, weights: str) -> dict:
    """What a Dagster host has: a user's settings (README, 'Run on AWS EMR'), AWS credentials, no
    Java, and the network of eu-west-1 (no AWS_ENDPOINT_URL, no AWS_DEFAULT_REGION)."""
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "host_home").mkdir()
    return {
        "PATH": str(Path(sys.executable).parent),  # the dagster CLI; no java on it
        "HOME": str(tmp_path / "host_home"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        # This checkout's code (the host works from another folder), and the emulated network.
        **aws_network.environment(endpoint, pythonpath=(str(PROJECT),)),
        "FRUITS_DEPLOYMENT": "emr",
        "FRUITS_AWS_REGION": "eu-west-1",
        "FRUITS_S3_BUCKET": bucket,
        "FRUITS_S3_PREFIX": PREFIX,
        "FRUITS_EMR_CLUSTER_ID": cluster_id,
        "FRUITS_IMAGES_ROOT": f"s3://{bucket}/{PREFIX}/images",
        "FRUITS_IMAGE_SIZE": "96",
        "FRUITS_MODEL_WEIGHTS": weights,
        "FRUITS_EMR_POLL_SECONDS": "1",
    }


def csv_by_image(table: pd.DataFrame, root: str) -> pd.DataFrame:
    """Rows keyed by the image's path below its images root (s3:// or local)."""
    table = table.copy()
    table["path"] = [p[len(root) :].lstrip("/") for p in table["path"]]
    return table.set_index("path").sort_index()


def test_whole_graph_on_the_emulated_cluster(
    emulation_ready,
    standalone_spark,
    spark,
    moto_server,
    s3_bucket,
    eu_west_1_network,
    shared_weights_or_none,
    tmp_path,
    monkeypatch,
    capsys,
):
    python, _, _ = emulation_ready
    # The cluster's Python can import the package from nowhere but the staged zip.
    assert _run_python(python, "import fruits_assets").returncode != 0

    images = generate_sample(tmp_path / "images", 4, 2)
    (images / "Training" / "Apple Red 1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=moto_server)
    listed = upload_tree(s3, images, s3_bucket, f"{PREFIX}/images")
    weights = "random"
    if shared_weights_or_none is not None:
        s3.upload_file(str(shared_weights_or_none), s3_bucket, f"{PREFIX}/models/backbone.weights.h5")
        weights = f"s3://{s3_bucket}/{PREFIX}/models/backbone.weights.h5"
    # A real key in moto's KMS: the cluster's (security configuration) and, in the second run, the
    # one boto3 encrypts with.
    key = boto3.client("kms", region_name="eu-west-1", endpoint_url=moto_server).create_key()["KeyMetadata"]
    cluster_id = create_cluster(s3_bucket, key["KeyId"], monkeypatch, capsys)

    env = host_environment(tmp_path, moto_server, s3_bucket, cluster_id, weights)
    # The host's working directory goes into the staged step (Dagster's code pointer) and the
    # step puts it on sys.path: on a real cluster it does not exist. Here the cluster shares this
    # machine's disk, so the host works from a folder without the package, as a daemon would.
    host_cwd = tmp_path / "host"
    host_cwd.mkdir()
    dagster = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "fruits_assets.definitions"]

    def local_csv(name: str) -> pd.DataFrame:
        """The reference: the local deployment's CSV of the same images (in this process)."""
        local = materialize(tmp_path / name, run_config(images, shared_weights_or_none or "random", 96))
        assert local.success
        return csv_by_image(pd.read_csv(tmp_path / name / "pca_features_csv" / "pca_features.csv"), str(images))

    def run_on_cluster(
        name: str, host_env: dict, command: list[str], on: str | None
    ) -> tuple[subprocess.CompletedProcess, pd.DataFrame]:
        """The host's run on the emulated cluster `on` (None: the one the command creates) and,
        meanwhile, the local reference."""
        # The cluster's exit (first) stops the host and the running step if this test fails.
        with (
            ThreadPoolExecutor(1) as pool,
            EmulatedEmrCluster(on, moto_server, standalone_spark, f"{tmp_path.name}-{name}") as cluster,
        ):
            running = pool.submit(cluster.run_host, command, 1800, cwd=host_cwd, env=host_env)
            local = local_csv(f"local-{name}")
            host = running.result()
        with capsys.disabled():
            print(f"\n{name}: {step_report(cluster.ran)}")
        log = host.stdout + host.stderr
        failed = [r for r in cluster.ran if r["returncode"] != 0]
        details = "".join(Path(r["folder"], "stderr").read_text()[-3000:] for r in failed)
        assert host.returncode == 0 and "RUN_SUCCESS" in log, log[-4000:] + details
        assert "JAVA_HOME" not in log and "Java gateway" not in log
        # Every Spark step ran on the cluster, once, as its own spark-submit; nothing else did.
        ran = [re.sub(r"^Execute Solid/Op ", "", r["name"]) for r in cluster.ran]
        assert sorted(ran) == sorted(SPARK_STEPS), ran
        assert not failed
        host.cluster_id = cluster.cluster_id
        for step in cluster.ran:
            assert "--py-files" in step["args"] and step["args"][step["args"].index("--master") + 1] == "yarn"
            assert_distributed(step)
        return host, local

    def csv_on_s3_equals(here: pd.DataFrame) -> pd.DataFrame:
        stored = s3.get_object(Bucket=s3_bucket, Key=CSV_KEY)["Body"].read()
        on_emr = csv_by_image(pd.read_csv(io.BytesIO(stored)), f"s3://{s3_bucket}/{PREFIX}/images")
        assert list(on_emr.columns) == list(here.columns) and list(on_emr.index) == list(here.index)
        assert (on_emr[["label", "split"]] == here[["label", "split"]]).all().all()
        pcs = [c for c in here.columns if c.startswith("pc_")]
        assert (on_emr[pcs] - here[pcs]).abs().to_numpy().max() <= 1e-4
        return on_emr

    _, local = run_on_cluster("cluster", env, [*dagster, "--select", "*"], on=cluster_id)
    if standalone_spark.hides_primary:  # the drivers' folders are there; the workers see none
        seen = standalone_spark.seen_by_workers(standalone_spark.primary)
        assert os.listdir(standalone_spark.primary) and seen == [[], []], seen
    # The assets are on S3, written by Spark through the S3 connector, encrypted.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"{PREFIX}/image_features/")["Contents"]]
    parquet = [k for k in keys if k.endswith(".parquet")]
    assert parquet and all(s3.head_object(Bucket=s3_bucket, Key=k)["ServerSideEncryption"] == "AES256" for k in parquet)
    # Without a KMS key, what boto3 writes is SSE-S3 (the host's staged steps, the CSV).
    written = boto3_writes(s3, s3_bucket, latest_run_id(tmp_path / "dagster_home"))
    assert {encryption(s3, s3_bucket, k) for k in written} == {("AES256", None)}
    # The same images in the local deployment give the same CSV.
    assert len(csv_on_s3_equals(local)) == listed - 1, "every image but the broken one"

    # New photos cost only their own work on EMR too: 1 added, 1 changed, 1 deleted.
    added = images / "Training" / "Apple Red 1" / "added.jpg"
    added.write_bytes((images / "Test" / "Banana 1" / "0_100.jpg").read_bytes())
    changed = sorted((images / "Training" / "Lime 1").glob("*.jpg"))[0]
    changed.write_bytes((images / "Test" / "Lime 1" / "0_100.jpg").read_bytes())
    deleted = sorted((images / "Test" / "Banana 1").glob("*.jpg"))[-1]
    deleted.unlink()
    for path in (added, changed):
        s3.upload_file(str(path), s3_bucket, f"{PREFIX}/images/{path.relative_to(images).as_posix()}")
    s3.delete_object(Bucket=s3_bucket, Key=f"{PREFIX}/images/{deleted.relative_to(images).as_posix()}")
    # This time with the KMS key (SSE-KMS for what boto3 writes) and the driver's logs fetched
    # back from the cluster's LogUri after each step (FRUITS_EMR_WAIT_FOR_LOGS=1).
    transient_env = {k: v for k, v in env.items() if k != "FRUITS_EMR_CLUSTER_ID"}
    transient_env.update({"FRUITS_KMS_KEY_ID": key["KeyId"], "FRUITS_EMR_WAIT_FOR_LOGS": "1"})
    host, local = run_on_cluster(
        "cluster-2", transient_env, [str(Path(sys.executable).parent / "fruits-emr"), "run"], on=None
    )
    assert host.cluster_id != cluster_id, "fruits-emr run made a cluster of its own"
    # moto files the cluster under the region it was reached in (eu-west-1's endpoint): its backend.
    [state] = [b.clusters[host.cluster_id].state for b in moto_emr_backends() if host.cluster_id in b.clusters]
    assert state in ("TERMINATING", "TERMINATED") and f"cluster {host.cluster_id}: terminated" in host.stdout, (
        state,
        host.stdout[-2000:],
    )
    assert host.stdout.count("---------- Spark Driver stdout: ----------") == len(SPARK_STEPS)
    run_id = latest_run_id(tmp_path / "dagster_home")
    written = boto3_writes(s3, s3_bucket, run_id)
    assert {encryption(s3, s3_bucket, k) for k in written} <= {("aws:kms", key["KeyId"]), ("aws:kms", key["Arn"])}
    metadata = latest_run_metadata(tmp_path / "dagster_home")
    usable = listed - 1
    # raw_images reads only the 2 objects whose size and ETag are new (the broken image is reused).
    raw = {k: metadata["raw_images"][k] for k in ("computed", "reused", "removed")}
    assert raw == {"computed": 2, "reused": listed - 2, "removed": 2}, raw
    for asset in ("preprocessed_images", "image_features"):
        counts = {k: metadata[asset][k] for k in ("computed", "reused", "removed")}
        assert counts == {"computed": 2, "reused": usable - 2, "removed": 2}, (asset, counts)
    # The workers read the new arrays from S3 themselves (boto3), not through the JVM.
    assert metadata["image_features"]["arrays_to_workers"].startswith("read by the Python workers from ")
    assert len(csv_on_s3_equals(local)) == usable


CSV_KEY = f"{PREFIX}/pca_features_csv/pca_features.csv"
# What the host stages for each step through boto3 (dagster-aws's names); the step's events file
# is written by dagster-aws's emr_step_main on the cluster, without an encryption header.
STAGED_BY_HOST = ("emr_step_main.py", "code.zip", "step_run_ref.pkl")


def boto3_writes(s3, bucket: str, run_id: str) -> list[str]:
    """Keys that run `run_id` wrote through boto3: the host's staged steps, the CSV and every
    asset's published-version pointer (`_CURRENT.json`)."""
    staged = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{PREFIX}/emr-staging/{run_id}/"
        )
        for o in page.get("Contents", [])
        if o["Key"].rsplit("/", 1)[-1] in STAGED_BY_HOST
    ]
    assert len(staged) == 3 * len(SPARK_STEPS), staged
    pointers = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{PREFIX}/")
        for o in page.get("Contents", [])
        if o["Key"].endswith("/_CURRENT.json")
    ]
    assert len(pointers) >= 6, pointers
    return [*staged, CSV_KEY, *pointers]


def encryption(s3, bucket: str, key: str) -> tuple[str, str | None]:
    head = s3.head_object(Bucket=bucket, Key=key)
    return head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")


def assert_distributed(step: dict) -> None:
    """The step's Spark application ran an executor on each of the two workers, each in a JVM of
    its own (not the driver's), and every task ran in one of them."""
    executors = step["executors"]
    assert step["app_id"] and {e["worker"] for e in executors} == {0, 1}, step
    pids = [e["pid"] for e in executors]
    assert None not in pids and len(set(pids)) == len(pids) and step["driver_pid"] not in pids, step
    assert step["tasks"] and set(step["tasks"]) <= {e["executor"] for e in executors}, step


def step_report(ran: list[dict]) -> str:
    """Each step's seconds and tasks per executor, for the test's output."""
    total = sum(r["seconds"] for r in ran)
    steps = ", ".join(f"{re.sub(r'^Execute Solid/Op ', '', r['name'])} {r['seconds']} s {r['tasks']}" for r in ran)
    return f"{len(ran)} steps, {total:.0f} s: {steps}"


def _run_python(python: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", code], env={"PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True, text=True
    )


@pytest.fixture
def shared_weights_or_none():
    from fruits_assets_tests.conftest import SHARED_WEIGHTS

    return SHARED_WEIGHTS if SHARED_WEIGHTS.exists() else None
