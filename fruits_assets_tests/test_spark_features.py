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


def test_stored_images_are_read_by_the_workers_with_the_same_features(spark, tmp_path):
    """Stored arrays (the stage's input as Spark reads it) are featurized by workers reading the
    files themselves: the same vectors as through the JVM, for exactly the rows the frame holds
    (some rows of a file left out), from a folder whose name Spark URL-encodes."""
    from pyspark.sql import functions as F

    model, storage = feature_model(resolve_weights("random", 96, Storage()), 96), Storage()
    folder = str(tmp_path / "out dir %20 #1" / "v-1")
    image_frame(spark, 30, partitions=3).write.parquet(folder)
    stored = spark.read.parquet(folder)
    wanted = stored.where(~F.col("path").isin([f"/x/Training/C/{i}.jpg" for i in (0, 7, 8, 29)]))

    def vectors(frame):
        return {r.path: (r.fingerprint, r.model_key, r.features) for r in frame.collect()}

    by_workers, through_jvm = (
        vectors(featurize_frame(spark, wanted, model, 1, 4, storage)),
        vectors(featurize_frame(spark, wanted, model, 1, 4)),
    )
    assert len(by_workers) == 26 and by_workers.keys() == through_jvm.keys()
    for path, (fingerprint, key, features) in by_workers.items():
        assert (fingerprint, key) == through_jvm[path][:2] == (f"sha{path.split('/')[-1][:-4]}", model.key)
        np.testing.assert_array_equal(features, through_jvm[path][2])
    plan = featurize_frame(spark, wanted, model, 1, 4, storage)._jdf.queryExecution().toString()
    assert "image" not in plan.split("== Physical Plan ==")[1]  # the JVM never reads the arrays


def test_rows_computed_in_the_job_go_through_the_jvm(spark):
    """Rows that are not read from a stored file (computed in the same job) are handed to the
    workers by the JVM, with a storage given or not."""
    model = feature_model(resolve_weights("random", 96, Storage()), 96)
    frame = featurize_frame(spark, image_frame(spark, 6, partitions=2), model, 1, 4, Storage())
    assert frame.count() == 6


def test_stored_images_of_another_size_are_a_clear_error():
    import pyarrow as pa
    import pytest

    from fruits_assets.errors import FruitsConfigError
    from fruits_assets.featurize import binary_to_batch

    good = pa.array([bytes(96 * 96 * 3)] * 3, pa.binary())
    assert binary_to_batch(good.slice(1), 96).shape == (2, 96, 96, 3)
    with pytest.raises(FruitsConfigError, match="not 96x96x3"):
        binary_to_batch(pa.array([bytes(96 * 96 * 3), bytes(5)], pa.binary()), 96)
    with pytest.raises(FruitsConfigError, match="without an image"):
        binary_to_batch(pa.array([bytes(96 * 96 * 3), None], pa.binary()), 96)


def test_a_stored_image_missing_from_its_file_fails_the_task(spark, tmp_path):
    """A row to featurize that its file no longer holds (the file changed under the run) fails
    the job with the file named: never fewer vectors than images, silently."""
    import pandas as pd
    import pytest

    model = feature_model(resolve_weights("random", 96, Storage()), 96)
    folder = tmp_path / "v-1"
    image_frame(spark, 4, partitions=1).write.parquet(str(folder))
    [file] = [f.as_uri() for f in folder.glob("*.parquet")]
    rows = pd.DataFrame(
        {"file": [file] * 2, "path": ["/x/Training/C/0.jpg", "/x/gone.jpg"], "fingerprint": ["sha0"] * 2}
    )
    broadcast = spark.sparkContext.broadcast(model.flatbuffer)
    frame = featurize._featurize_stored_files(spark, rows, broadcast, model.key, 96, 1, 4, Storage())
    with pytest.raises(Exception, match="2 stored images to featurize, 1 found"):
        frame.collect()
