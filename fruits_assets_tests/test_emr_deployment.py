"""FRUITS_DEPLOYMENT=emr: its resources, the S3 IO manager and the EMR step launcher round trip.

Real parts: the project's `emr` resource dict, `S3FruitsIOManager` and the dagster-aws EMR PySpark
step launcher, talking HTTP to moto's S3/EMR server on loopback (the `moto_server` fixture), and a
real local Spark session. Simulated: the EMR cluster itself. moto accepts `add_job_flow_steps` but
never runs a step (it stays RUNNING), so the step-launcher test plays the cluster: its patched
`EmrJobRunner.is_emr_step_complete` reads the submitted step's spark-submit arguments back from
moto, runs `dagster_aws.emr.emr_step_main.main(bucket, step_run_ref_key)` in this process (it
downloads the staged step from moto S3, runs the asset on local Spark, uploads its events to S3)
and then reports the step complete. The launcher's 15 s poll sleep is neutralised, and the wait for EMR's log files on S3
(which moto never writes) is turned off with FRUITS_EMR_WAIT_FOR_LOGS=0 (a recorder on
`_log_logs_from_s3` checks it is not called); everything else is the launcher's own code.
"""

import io
import json
import os
import zipfile

import boto3
import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster_pyspark import PySparkResource

from fruits_assets import assets as fruits_assets_module
from fruits_assets.io_managers import CsvTable, S3FruitsIOManager
from fruits_assets.pca import PcaModel
from fruits_assets.resources import resources_by_deployment
from fruits_assets.settings import FruitsConfigError

EMR_ENV = {"FRUITS_S3_BUCKET": "fruits-unit", "FRUITS_EMR_CLUSTER_ID": "j-UNITTEST"}
ON_CLUSTER_MARKER = "FRUITS_TEST_RUNNING_AS_EMR_STEP"


@pytest.fixture
def emr_env(monkeypatch):
    for name in ("FRUITS_AWS_REGION", "FRUITS_ALLOW_NON_EU_REGION", "FRUITS_S3_ENDPOINT_URL", "FRUITS_KMS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in EMR_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FRUITS_S3_PREFIX", "fruits")


# -- the resource dict ----------------------------------------------------------------------------
def test_emr_resources_have_the_local_keys(emr_env):
    assert set(resources_by_deployment("emr")) == set(resources_by_deployment("local"))


def test_emr_definitions_validate(emr_env):
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([fruits_assets_module]),
        resources=resources_by_deployment("emr"),
    )
    dg.Definitions.validate_loadable(defs)


def test_emr_refuses_a_non_eu_region_unless_allowed(emr_env, monkeypatch):
    monkeypatch.setenv("FRUITS_AWS_REGION", "us-east-1")
    with pytest.raises(FruitsConfigError, match="us-east-1.*refused.*FRUITS_ALLOW_NON_EU_REGION"):
        resources_by_deployment("emr")
    monkeypatch.setenv("FRUITS_ALLOW_NON_EU_REGION", "1")
    resources = resources_by_deployment("emr")
    assert resources["io_manager"].region_name == "us-east-1"


# -- the S3 IO manager on moto ----------------------------------------------------------------------
def s3_io_manager(bucket: str, spark_config: dict | None = None) -> S3FruitsIOManager:
    return S3FruitsIOManager(
        bucket=bucket, prefix="fruits", pyspark=PySparkResource(spark_config=spark_config or {})
    )


def small_pca(seed: int) -> PcaModel:
    rng = np.random.default_rng(seed)
    return PcaModel(
        components=rng.normal(size=(8, 3)),
        mean=rng.normal(size=8),
        explained_variance=np.array([0.6, 0.3, 0.05, 0.05]),
        variance_target=0.9,
        max_k=4,
        train_rows=20,
        spark_model=None,
    )


def store(manager, key: str, obj, run_id: str):
    context = dg.build_output_context(asset_key=key, run_id=run_id)
    manager.handle_output(context, obj)


def load(manager, key: str):
    return manager.load_input(dg.build_input_context(asset_key=dg.AssetKey(key)))


def objects(bucket: str, prefix: str) -> list[str]:
    s3 = boto3.client("s3", region_name="eu-west-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_pca_model_round_trips_encrypted_and_overwrites(s3_bucket):
    manager = s3_io_manager(s3_bucket)
    s3 = boto3.client("s3", region_name="eu-west-1")
    first, second = small_pca(1), small_pca(2)

    store(manager, "pca_model", first, run_id="aaaaaaaa-run-1")
    loaded = load(manager, "pca_model")
    assert loaded.spark_model is None
    np.testing.assert_array_equal(loaded.components, first.components)
    np.testing.assert_array_equal(loaded.mean, first.mean)
    assert (loaded.k, loaded.variance_target, loaded.train_rows) == (3, 0.9, 20)
    first_keys = objects(s3_bucket, "fruits/pca_model/")
    for key in first_keys:
        assert s3.head_object(Bucket=s3_bucket, Key=key)["ServerSideEncryption"] == "AES256", key

    store(manager, "pca_model", second, run_id="bbbbbbbb-run-2")
    np.testing.assert_array_equal(load(manager, "pca_model").components, second.components)
    second_keys = objects(s3_bucket, "fruits/pca_model/")
    old_version = next(k for k in first_keys if k.endswith("pca_model.npz"))
    assert old_version not in second_keys, "the replaced version was not deleted"
    assert [k for k in second_keys if k.endswith(".npz")] == [
        k for k in second_keys if "bbbbbbbb" in k and k.endswith(".npz")
    ]
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key="fruits/pca_model/_CURRENT.json")["Body"].read())
    assert manifest["run_id"] == "bbbbbbbb-run-2" and manifest["spark_model"] is False


def test_csv_table_round_trips(s3_bucket, spark):
    manager = s3_io_manager(s3_bucket)
    frame = spark.createDataFrame(
        [("Training/Apple Red 1/a.jpg", "Apple Red 1", "Training", [1.5, -2.0]),
         ("Test/Banana/b.jpg", "Banana", "Test", [0.25, 3.0])],
        "path string, label string, split string, pcs array<double>",
    )
    store(manager, "pca_features_csv", CsvTable(frame, 2, "pca_features.csv"), run_id="cccccccc-run")
    table = load(manager, "pca_features_csv").sort_values("path").reset_index(drop=True)
    assert list(table.columns) == ["path", "label", "split", "pc_1", "pc_2"]
    assert table["label"].tolist() == ["Banana", "Apple Red 1"]
    assert table["pc_2"].tolist() == [3.0, -2.0]
    s3 = boto3.client("s3", region_name="eu-west-1")
    head = s3.head_object(Bucket=s3_bucket, Key="fruits/pca_features_csv/pca_features.csv")
    assert head["ServerSideEncryption"] == "AES256"


# -- the EMR step launcher round trip --------------------------------------------------------------
@dg.asset(required_resource_keys={"pyspark", "pyspark_step_launcher"})
def emr_roundtrip_table(context: dg.AssetExecutionContext):
    """A tiny Spark table, built wherever the step launcher runs the step."""
    spark = context.resources.pyspark.spark_session
    frame = spark.createDataFrame(
        [("Training/Kiwi/k.jpg", "Kiwi", "Training", [0.5])],
        "path string, label string, split string, pcs array<double>",
    )
    return dg.Output(
        CsvTable(frame, 1, "roundtrip.csv"),
        metadata={"ran_as_emr_step": os.environ.get(ON_CLUSTER_MARKER, "no")},
    )


def emr_roundtrip_job():
    """Module-level, so `dg.reconstructable` can rebuild it inside the (simulated) EMR step."""
    defs = dg.Definitions(
        assets=[emr_roundtrip_table],
        jobs=[dg.define_asset_job("emr_roundtrip", selection=[emr_roundtrip_table])],
        resources=resources_by_deployment("emr"),
        executor=dg.in_process_executor,
    )
    return defs.resolve_job_def("emr_roundtrip")


def test_step_launcher_round_trip_through_s3(s3_bucket, spark, emr_env, monkeypatch, tmp_path):
    from dagster_aws.emr import EmrJobRunner, emr_step_main
    from dagster_aws.emr import pyspark_step_launcher as launcher_module

    emr = boto3.client("emr", region_name="eu-west-1")
    cluster_id = emr.run_job_flow(
        Name="fruits-roundtrip",
        ReleaseLabel="emr-7.9.0",
        Instances={"MasterInstanceType": "m7g.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="FruitsEmrInstanceProfile",
        ServiceRole="FruitsEmrServiceRole",
    )["JobFlowId"]
    monkeypatch.setenv("FRUITS_S3_BUCKET", s3_bucket)
    monkeypatch.setenv("FRUITS_EMR_CLUSTER_ID", cluster_id)
    # EMR's log files never reach moto's S3: the launcher must not wait for them.
    monkeypatch.setenv("FRUITS_EMR_WAIT_FOR_LOGS", "0")

    played_steps = []

    def play_the_cluster(self, log, polled_cluster_id, emr_step_id):
        step = emr.describe_step(ClusterId=polled_cluster_id, StepId=emr_step_id)["Step"]
        args = step["Config"]["Args"]
        bucket, step_run_ref_key = args[-2], args[-1]  # spark-submit ... <main.py> <bucket> <key>
        played_steps.append({"cluster": polled_cluster_id, "args": args, "state": step["Status"]["State"]})
        os.environ[ON_CLUSTER_MARKER] = "yes"
        try:
            emr_step_main.main(bucket, step_run_ref_key)
        finally:
            os.environ.pop(ON_CLUSTER_MARKER, None)
        return True

    logs_waited = []
    monkeypatch.setattr(EmrJobRunner, "is_emr_step_complete", play_the_cluster)
    monkeypatch.setattr(launcher_module, "time", type("NoSleep", (), {"sleep": staticmethod(lambda s: None)}))
    monkeypatch.setattr(
        launcher_module.EmrPySparkStepLauncher, "_log_logs_from_s3", lambda self, log, step_id: logs_waited.append(step_id)
    )

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(dg.reconstructable(emr_roundtrip_job), instance=instance)
        assert result.success
        (materialization,) = result.get_asset_materialization_events()
        metadata = materialization.materialization.metadata

    # The step went through EMR: submitted to the cluster, as spark-submit of the staged files.
    (played,) = played_steps
    assert played["cluster"] == cluster_id and played["state"] == "RUNNING"
    args = played["args"]
    assert args[0] == "/usr/lib/spark/bin/spark-submit" and "--py-files" in args
    staging = f"fruits/emr-staging/{result.run_id}/emr_roundtrip_table/"
    assert args[-2] == s3_bucket and args[-1] == staging + "step_run_ref.pkl"
    staged = objects(s3_bucket, staging)
    assert {k.rsplit("/", 1)[1] for k in staged} >= {"step_run_ref.pkl", "code.zip", "emr_step_main.py", "events.pkl"}
    code = boto3.client("s3", region_name="eu-west-1").get_object(Bucket=s3_bucket, Key=staging + "code.zip")["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(code)).namelist()
    assert "fruits_assets/io_managers.py" in names and not any("fruits_assets_tests" in n for n in names)

    # The asset body ran in the step process, and its events came back to this run through S3.
    assert metadata["ran_as_emr_step"].value == "yes"
    assert metadata["csv_rows"].value == 1
    assert logs_waited == [], "FRUITS_EMR_WAIT_FOR_LOGS=0 must not wait for EMR's log files"
    stored = pd.read_csv(
        io.BytesIO(
            boto3.client("s3", region_name="eu-west-1")
            .get_object(Bucket=s3_bucket, Key="fruits/emr_roundtrip_table/roundtrip.csv")["Body"]
            .read()
        )
    )
    assert stored.to_dict("records") == [{"path": "Training/Kiwi/k.jpg", "label": "Kiwi", "split": "Training", "pc_1": 0.5}]
