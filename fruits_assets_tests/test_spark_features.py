"""Featurization on real local Spark: the model is built once per Python worker (not per batch,
partition or task), and features are the same however the images are partitioned."""

import numpy as np
import pandas as pd

from fruits_assets import featurize
from fruits_assets.featurize import resolve_weights
from fruits_assets.images import array_to_bytes
from fruits_assets.spark_jobs import FEATURIZE_WORKER_ENV, _worker_pool, featurize_frame
from fruits_assets.storage import Storage


def image_frame(spark, count: int, partitions: int, size: int = 96):
    rng = np.random.default_rng(3)
    rows = [
        (f"/x/Training/C/{i}.jpg", "Training", "C", array_to_bytes(rng.integers(0, 255, (size, size, 3))))
        for i in range(count)
    ]
    return spark.createDataFrame(rows, "path string, split string, label string, image binary").repartition(partitions)


def builds_per_worker(spark, key) -> dict:
    """Ask every Python worker of the featurization pool how often it built the model `key`."""
    import os

    def report(batches):
        for _ in batches:
            yield pd.DataFrame({"pid": [os.getpid()], "builds": [featurize.MODEL_BUILDS[key]]})

    probe = spark.range(0, 64, numPartitions=16)
    with _worker_pool(spark.sparkContext, *FEATURIZE_WORKER_ENV):
        rows = probe.mapInPandas(report, "pid long, builds long").collect()
    return {r.pid: r.builds for r in rows}


def test_model_is_built_once_per_python_worker(spark):
    weights = resolve_weights("random", 128, Storage())
    frame = image_frame(spark, 48, partitions=12, size=128)  # 12 tasks, several batches each
    features = featurize_frame(spark, frame, weights, 128, 1, batch_size=4)
    for _ in range(2):  # a second job reuses the workers and their model
        assert features.count() == 48
    workers = builds_per_worker(spark, (weights.sha256, 128))
    assert 1 <= len(workers) <= spark.sparkContext.defaultParallelism
    assert set(workers.values()) == {1}, workers


def test_features_do_not_depend_on_partitioning(spark):
    weights = resolve_weights("random", 96, Storage())

    def run(partitions):
        frame = featurize_frame(spark, image_frame(spark, 10, partitions), weights, 96, 1, batch_size=3)
        return np.array([r.features for r in frame.orderBy("path").collect()])

    np.testing.assert_allclose(run(1), run(5), atol=1e-5)
