"""The Spark side of each stage: DataFrames in, DataFrames out, the pure functions run per batch.

Nothing here collects images or features to the driver; the CSV is streamed partition by
partition (`toLocalIterator`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import pandas as pd

from fruits_assets.featurize import Weights, cached_model, featurize_batch
from fruits_assets.images import ImageRejected, array_to_bytes, bytes_to_batch, decode_image
from fruits_assets.listing import ListedFile

def task_slots(spark) -> int:
    """How many Spark tasks run at once."""
    return max(1, spark.sparkContext.defaultParallelism // int(spark.conf.get("spark.task.cpus", "1")))


def partitions_for(rows: int, spark, rows_per_partition: int) -> int:
    """Enough partitions for ~rows_per_partition rows each, rounded up to a multiple of the task
    slots: 3 equal partitions on 2 slots take 2 rounds, i.e. as long as 4. Small partitions are
    cheap (a worker keeps its model across tasks) and let a fast core take more of them when
    another is slowed down (a busy neighbour on the machine or node)."""
    slots = task_slots(spark)
    wanted = max(slots, math.ceil(rows / rows_per_partition))
    return max(1, min(math.ceil(wanted / slots) * slots, max(rows, 1)))


def balanced_for_featurization(images, rows: int, spark, rows_per_partition: int):
    """`images` as they are when their partitions already keep every task slot busy (a Parquet
    read gives byte-balanced splits), else repartitioned: a shuffle moves every image's bytes
    through the JVM once more, measured at ~10% of the Spark path's CPU at 224 px."""
    slots = task_slots(spark)
    partitions = images.rdd.getNumPartitions()
    if partitions % slots == 0 or partitions >= 4 * slots:
        return images
    return images.repartition(partitions_for(rows, spark, rows_per_partition))


# -- raw_images --------------------------------------------------------------------------------
RAW_SCHEMA = "path string, split string, label string, reason string, size long, content binary"


def raw_images_frame(spark, listed: list[ListedFile], storage, rows_per_partition: int):
    """Listed files -> DataFrame with each file's bytes, read by the executors (not the driver)."""
    listing = pd.DataFrame(
        {
            "path": [f.path for f in listed],
            "split": [f.split for f in listed],
            "label": [f.label for f in listed],
            "reason": [f.reason for f in listed],
        }
    )
    frame = spark.createDataFrame(listing, "path string, split string, label string, reason string")
    frame = frame.repartition(partitions_for(len(listed), spark, rows_per_partition))

    def read(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            contents, sizes, reasons = [], [], []
            for path, reason in zip(batch["path"], batch["reason"]):
                data = None
                if reason is None:
                    try:
                        data = storage.read_bytes(path)
                    except Exception as error:  # unreadable file: quarantine, do not crash
                        reason = f"unreadable file: {type(error).__name__}: {error}"
                contents.append(data)
                sizes.append(len(data) if data is not None else None)
                reasons.append(reason)
            yield batch.assign(reason=reasons, size=sizes, content=contents)

    return frame.mapInPandas(read, RAW_SCHEMA)


# -- preprocessed_images ------------------------------------------------------------------------
DECODED_SCHEMA = (
    "path string, split string, label string, image binary, reason string, stage string"
)


def preprocess_frame(raw, image_size: int):
    """Decode, convert to RGB and resize every listed image; rows that fail carry the reason."""

    def decode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            images, reasons, stages = [], [], []
            for content, reason in zip(batch["content"], batch["reason"]):
                image, stage = None, None
                if reason is not None:
                    stage = "listing"
                else:
                    try:
                        image = array_to_bytes(decode_image(content, image_size))
                    except ImageRejected as rejected:
                        reason, stage = str(rejected), "decode"
                images.append(image)
                reasons.append(reason)
                stages.append(stage)
            yield pd.DataFrame(
                {
                    "path": batch["path"],
                    "split": batch["split"],
                    "label": batch["label"],
                    "image": images,
                    "reason": reasons,
                    "stage": stages,
                }
            )

    return raw.select("path", "split", "label", "reason", "content").mapInPandas(
        decode, DECODED_SCHEMA
    )


# -- image_features -----------------------------------------------------------------------------
FEATURES_SCHEMA = "path string, split string, label string, features array<float>"


# Marks the Python functions of featurization. PySpark keeps one pool of Python workers per
# distinct worker environment, so featurization gets its own workers: without it, the workers that
# read and decode images in the same session would also take featurization tasks, and every one of
# them would import TensorFlow and build a model (measured: 4-6 models instead of one per core).
FEATURIZE_WORKER_ENV = ("FRUITS_WORKER_POOL", "featurize")


@contextlib.contextmanager
def _worker_pool(sc, name: str, value: str):
    previous = sc.environment.get(name)
    sc.environment[name] = value
    try:
        yield
    finally:
        if previous is None:
            sc.environment.pop(name, None)
        else:
            sc.environment[name] = previous


def featurize_frame(spark, images, weights: Weights, image_size: int, threads: int, batch_size: int):
    """MobileNetV2 features of every preprocessed image.

    The weights go to the executors once, as a broadcast; each Python worker of the featurization
    pool builds the model once (`cached_model`) and reuses it for every batch and task it runs.
    """
    broadcast = spark.sparkContext.broadcast(weights.data)
    spec, sha256, suffix = weights.spec, weights.sha256, weights.suffix

    def featurize(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = cached_model(
            sha256, image_size, threads, lambda: Weights(spec, sha256, suffix, broadcast.value)
        )
        for batch in batches:
            vectors = featurize_batch(model, bytes_to_batch(batch["image"], image_size), batch_size)
            yield pd.DataFrame(
                {
                    "path": batch["path"],
                    "split": batch["split"],
                    "label": batch["label"],
                    "features": list(vectors),
                }
            )

    # The worker environment is captured when the Python function is wrapped, i.e. here.
    with _worker_pool(spark.sparkContext, *FEATURIZE_WORKER_ENV):
        return images.select("path", "split", "label", "image").mapInPandas(
            featurize, FEATURES_SCHEMA
        )


def as_vectors(features):
    from pyspark.ml.functions import array_to_vector

    return features.withColumn("features", array_to_vector("features"))


# -- pca_features_csv ---------------------------------------------------------------------------
def project_frame(features, spark_model):
    from pyspark.ml.functions import vector_to_array

    return (
        spark_model.transform(as_vectors(features))
        .select("path", "label", "split", vector_to_array("pca").alias("pcs"))
        .orderBy("split", "label", "path")
    )
