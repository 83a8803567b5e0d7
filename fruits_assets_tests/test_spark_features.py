"""Featurization on real local Spark: the interpreter is built once per Python worker (not per
batch, partition or task), and features are the same however the images are partitioned."""

import numpy as np
import pandas as pd

from fruits_assets import featurize
from fruits_assets.featurize import feature_model, featurize_frame, resolve_weights
from fruits_assets.images import array_to_bytes
from fruits_assets.storage import Storage


def image_frame(spark, count: int, partitions: int, size: int = 96):
    rng = np.random.default_rng(3)
    rows = [
        (f"/x/Training/C/{i}.jpg", "Training", "C", f"sha{i}", array_to_bytes(rng.integers(0, 255, (size, size, 3))))
        for i in range(count)
    ]
    schema = "path string, split string, label string, fingerprint string, image binary"
    return spark.createDataFrame(rows, schema).repartition(partitions)


def builds_per_worker(spark, key) -> dict:
    """Ask every Python worker how often it built the interpreter of model `key`."""
    import os

    def report(batches):
        for _ in batches:
            yield pd.DataFrame({"pid": [os.getpid()], "builds": [featurize.BUILDS[key]]})

    rows = spark.range(0, 64, numPartitions=16).mapInPandas(report, "pid long, builds long").collect()
    return {r.pid: r.builds for r in rows}


def test_interpreter_is_built_once_per_python_worker(spark):
    model = feature_model(resolve_weights("random", 128, Storage()), 128)
    frame = image_frame(spark, 48, partitions=12, size=128)  # 12 tasks, several batches each
    features = featurize_frame(spark, frame, model, 1, batch_size=4)
    for _ in range(2):  # a second job reuses the workers and their interpreter
        assert features.count() == 48
    workers = {pid: n for pid, n in builds_per_worker(spark, model.key).items() if n}
    # Spark may fork a spare worker when a task starts before the previous task's worker is back
    # in the pool (3 workers for local[2] in one CI run): a few workers, never one per task (24).
    assert 1 <= len(workers) <= 2 * spark.sparkContext.defaultParallelism, workers
    assert set(workers.values()) == {1}, workers


def test_features_do_not_depend_on_partitioning(spark):
    model = feature_model(resolve_weights("random", 96, Storage()), 96)

    def run(partitions):
        frame = featurize_frame(spark, image_frame(spark, 10, partitions), model, 1, batch_size=3)
        return np.array([r.features for r in frame.orderBy("path").collect()])

    np.testing.assert_array_equal(run(1), run(5))


def test_parquet_and_arrow_batches_of_images_stay_small(spark):
    """Batches are counted in rows, images are big: with Parquet's default vectorized batch (4,096
    rows, ~600 MB at 224 px) two tasks ran the 4 GB driver out of heap at 24,000 images. Both
    batch sizes of the session, times the largest image, stay within 64 MB per task."""
    from fruits_assets.constants import SUPPORTED_IMAGE_SIZES
    from fruits_assets.settings import FruitsSettings
    from fruits_assets.spark import runtime_config

    largest = max(SUPPORTED_IMAGE_SIZES) ** 2 * 3
    config = runtime_config(FruitsSettings().resolve({}))
    for key in ("spark.sql.parquet.columnarReaderBatchSize", "spark.sql.execution.arrow.maxRecordsPerBatch"):
        assert int(config[key]) * largest <= 64 * 2**20, key
        assert spark.conf.get(key) == config[key], key  # the session the tests (and runs) use
