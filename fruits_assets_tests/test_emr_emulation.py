"""The whole graph in the `emr` deployment, on an emulated EMR cluster.

The host is the real CLI - `dagster asset materialize -m fruits_assets.definitions --select '*'` -
in its own process, with FRUITS_DEPLOYMENT=emr, the EMR settings in its environment, and neither
Java nor JAVA_HOME: it only plans the run, stages and submits each Spark step (6 assets, 4 checks)
to EMR and streams the steps' events back from S3; the two steps without Spark (`pca_quality`, the
PCA target check) run on it. The cluster was made by `fruits-emr create` (moto's EMR) and its
steps are run by `emr_emulation.EmulatedEmrCluster`: each as its own spark-submit process, with
the cluster's environment and Python only, `fruits_assets` importable only from the staged zip,
and s3:// served by a real Hadoop S3 connector against moto's S3 (see that module's docstring for
what the emulation covers and what only a real cluster can show).

The result is checked against the local deployment on the same images: the CSV on S3 equals the
local CSV to 1e-4. Then images are added, changed and deleted on S3 and the host runs again: the
steps on the cluster reuse the stored arrays and vectors of the unchanged images (incremental
runs work the same on EMR), and the CSV still equals a local run on the final images.
"""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pandas as pd
import pytest

from emr_resources import cli as emr_cli
from fruits_assets.sample_data import generate_sample
from fruits_assets_tests.emr_emulation import (
    EmulatedEmrCluster,
    EmulationUnavailable,
    cluster_python,
    java_home,
    s3a_jars,
    tag_default_network_for_emr,
)
from fruits_assets_tests.helpers import materialize, run_config

pytestmark = pytest.mark.slow

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


def upload_tree(s3, folder: Path, bucket: str, prefix: str) -> int:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return len(files)


def create_cluster(bucket: str, monkeypatch, capsys) -> str:
    monkeypatch.setenv("FRUITS_KMS_KEY_ID", "1234abcd-12ab-34cd-56ef-1234567890ab")
    tag_default_network_for_emr("eu-west-1")  # `create` checks the network's EMR tags
    assert emr_cli.main(["create", "--bucket", bucket, "--prefix", PREFIX]) == 0
    return re.search(r"^export FRUITS_EMR_CLUSTER_ID=(j-\w+)$", capsys.readouterr().out, re.M).group(1)


def host_environment(tmp_path: Path, endpoint: str, bucket: str, cluster_id: str, weights: str) -> dict:
    """What a Dagster host has: its settings, AWS credentials, and no Java."""
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "host_home").mkdir()
    return {
        "PATH": str(Path(sys.executable).parent),  # the dagster CLI; no java on it
        "PYTHONPATH": str(PROJECT),  # this checkout's code (the host works from another folder)
        "HOME": str(tmp_path / "host_home"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_ENDPOINT_URL": endpoint,
        "FRUITS_DEPLOYMENT": "emr",
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
    emulation_ready, spark, moto_server, s3_bucket, shared_weights_or_none, tmp_path, monkeypatch, capsys
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
    cluster_id = create_cluster(s3_bucket, monkeypatch, capsys)

    env = host_environment(tmp_path, moto_server, s3_bucket, cluster_id, weights)
    # The host's working directory goes into the staged step (Dagster's code pointer) and the
    # step puts it on sys.path: on a real cluster it does not exist. Here the cluster shares this
    # machine's disk, so the host works from a folder without the package, as a daemon would.
    host_cwd = tmp_path / "host"
    host_cwd.mkdir()
    dagster = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "fruits_assets.definitions"]

    def run_on_cluster(name: str) -> EmulatedEmrCluster:
        with EmulatedEmrCluster(cluster_id, moto_server, tmp_path / name) as cluster:
            host = cluster.run_host([*dagster, "--select", "*"], timeout=1800, cwd=host_cwd, env=env)
        log = host.stdout + host.stderr
        failed = [r for r in cluster.ran if r["returncode"] != 0]
        details = "".join(Path(r["folder"], "stderr").read_text()[-3000:] for r in failed)
        assert host.returncode == 0 and "RUN_SUCCESS" in log, log[-4000:] + details
        assert "JAVA_HOME" not in log and "Java gateway" not in log
        # Every Spark step ran on the cluster, once, as its own spark-submit; nothing else did.
        ran = [re.sub(r"^Execute Solid/Op ", "", r["name"]) for r in cluster.ran]
        assert sorted(ran) == sorted(SPARK_STEPS), ran
        assert not failed
        for step in cluster.ran:
            assert "--py-files" in step["args"] and step["args"][step["args"].index("--master") + 1] == "yarn"
        return cluster

    def csv_on_s3_equals_local(name: str) -> pd.DataFrame:
        stored = s3.get_object(Bucket=s3_bucket, Key=f"{PREFIX}/pca_features_csv/pca_features.csv")["Body"].read()
        on_emr = csv_by_image(pd.read_csv(io.BytesIO(stored)), f"s3://{s3_bucket}/{PREFIX}/images")
        local = materialize(tmp_path / name, run_config(images, shared_weights_or_none or "random", 96))
        assert local.success
        here = csv_by_image(pd.read_csv(tmp_path / name / "pca_features_csv" / "pca_features.csv"), str(images))
        assert list(on_emr.columns) == list(here.columns) and list(on_emr.index) == list(here.index)
        assert (on_emr[["label", "split"]] == here[["label", "split"]]).all().all()
        pcs = [c for c in here.columns if c.startswith("pc_")]
        assert (on_emr[pcs] - here[pcs]).abs().to_numpy().max() <= 1e-4
        return on_emr

    run_on_cluster("cluster")
    # The assets are on S3, written by Spark through the S3 connector, encrypted.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"{PREFIX}/image_features/")["Contents"]]
    parquet = [k for k in keys if k.endswith(".parquet")]
    assert parquet and all(s3.head_object(Bucket=s3_bucket, Key=k)["ServerSideEncryption"] == "AES256" for k in parquet)
    # The same images in the local deployment give the same CSV.
    assert len(csv_on_s3_equals_local("local")) == listed - 1, "every image but the broken one"

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
    run_on_cluster("cluster-2")
    metadata = latest_run_metadata(tmp_path / "dagster_home")
    usable = listed - 1
    # raw_images reads only the 2 objects whose size and ETag are new (the broken image is reused).
    raw = {k: metadata["raw_images"][k] for k in ("computed", "reused", "removed")}
    assert raw == {"computed": 2, "reused": listed - 2, "removed": 2}, raw
    for asset in ("preprocessed_images", "image_features"):
        counts = {k: metadata[asset][k] for k in ("computed", "reused", "removed")}
        assert counts == {"computed": 2, "reused": usable - 2, "removed": 2}, (asset, counts)
    assert len(csv_on_s3_equals_local("local-2")) == usable


def latest_run_metadata(home: Path) -> dict:
    """{asset: metadata} of the newest run in the Dagster home `home` (the host's event log)."""
    import dagster as dg

    out = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = instance.get_run_records(limit=1)[0].dagster_run.run_id
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = entry.dagster_event.event_specific_data.materialization
            out[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    return out


def _run_python(python: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-c", code], env={"PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True, text=True
    )


@pytest.fixture
def shared_weights_or_none():
    from fruits_assets_tests.conftest import SHARED_WEIGHTS

    return SHARED_WEIGHTS if SHARED_WEIGHTS.exists() else None
