"""The IO manager of the `emr` deployment on S3: what boto3 stores (PCA model, CSV), encrypted,
versioned, against moto's S3 server on loopback (the `moto_server` fixture), with a real local
Spark session. The whole graph on an emulated cluster is `test_emr_emulation.py`."""

import json

import boto3
import dagster as dg
import numpy as np

from fruits_assets.csv_table import CsvTable
from fruits_assets.io_managers import FruitsIOManager
from fruits_assets.pca import PcaModel
from fruits_assets_tests.helpers import io_manager


def s3_io_manager(bucket: str) -> FruitsIOManager:
    return io_manager(deployment="emr", s3_bucket=bucket, s3_prefix="fruits", emr_cluster_id="j-UNITTEST")


def small_pca(seed: int) -> PcaModel:
    rng = np.random.default_rng(seed)
    return PcaModel(
        components=rng.normal(size=(8, 3)),
        mean=rng.normal(size=8),
        explained_variance=np.array([0.6, 0.3, 0.05, 0.05]),
        variance_target=0.9,
        max_k=4,
        train_rows=20,
        spark=None,
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
    store(manager, "pca_model", small_pca(3), run_id="cccccccc-run-3")
    third_keys = objects(s3_bucket, "fruits/pca_model/")
    oldest = next(k for k in first_keys if k.endswith("pca_model.npz"))
    assert oldest not in third_keys, "a version older than the previous one was not deleted"
    assert sorted(k.split("/")[2].split("-")[2] for k in third_keys if k.endswith(".npz")) == ["bbbbbbbb", "cccccccc"]
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key="fruits/pca_model/_CURRENT.json")["Body"].read())
    assert manifest["run_id"] == "cccccccc-run-3" and manifest["spark_model"] is False


def test_csv_table_round_trips(s3_bucket, spark):
    manager = s3_io_manager(s3_bucket)
    frame = spark.createDataFrame(
        [
            ("Training/Apple Red 1/a.jpg", "Apple Red 1", "Training", [1.5, -2.0]),
            ("Test/Banana/b.jpg", "Banana", "Test", [0.25, 3.0]),
        ],
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
