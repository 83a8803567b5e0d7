"""The Spark side of each stage: DataFrames in, DataFrames out, the pure functions run per batch.

Nothing here collects images or features to the driver; the CSV is written by Spark in sorted
ranges and joined into one file (`csv_table.write_csv`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import pandas as pd

from fruits_assets.errors import is_missing_filesystem
from fruits_assets.images import ImageRejected, array_to_bytes, decode_image, open_image
from fruits_assets.listing import ListedFile
from fruits_assets.python_workers import on_worker
from fruits_assets.storage import is_s3


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


def size_file_scans(spark, rows_read: int, rows_per_partition: int) -> None:
    """Set the session's `spark.sql.files.minPartitionNum` for the next jobs: the file scans of a
    stage that reads `rows_read` rows in all give at least one partition per ~rows_per_partition
    rows. Each file a stage wrote holds about that many rows (`spark.sql.files.maxRecordsPerFile`),
    so each becomes its own partition, without a shuffle (which would move every image's bytes
    once more). It is a session setting, not a frame's: Spark reads the files when the stage's
    output is written (after the asset returns), so it stays set until the next stage sets it.

    It applies to every file scan of the job: an incremental stage also reads the rows it reuses
    from the previous version, so it is sized from all the rows the job reads, else those files
    are packed into a few huge partitions (5,995 reused images at 224 px in 2 tasks ran the JVM
    out of heap).
    """
    spark.conf.set("spark.sql.files.minPartitionNum", str(partitions_for(rows_read, spark, rows_per_partition)))


def repartition_for_work(frame, rows: int, rows_per_partition: int):
    """`frame` (`rows` rows) in partitions of about `rows_per_partition` rows: every core busy to
    the end, and progress reported a partition at a time. Only repartitioned (a shuffle) when its
    partitions are far fewer (files written otherwise, or a local relation)."""
    wanted = partitions_for(rows, frame.sparkSession, rows_per_partition)
    if frame.rdd.getNumPartitions() * 2 >= wanted:
        return frame
    return frame.repartition(wanted)


# -- raw_images --------------------------------------------------------------------------------
RAW_SCHEMA = (
    "path string, split string, label string, reason string, stage string, size long, fingerprint string, "
    "checked boolean, identity string, content binary"
)
RAW_COLUMNS = tuple(column.split()[0] for column in RAW_SCHEMA.split(", "))
LISTING_SCHEMA = "path string, split string, label string, reason string, identity string"
# Stored raw rows that a file with the same path and identity keeps: the verdicts of its content
# (a usable image, or not decodable) and of its name; an unreadable file is tried again.
RAW_REUSABLE = "stage IS NULL OR stage IN ('decode', 'listing')"


def listing_rows(listed: list[ListedFile]) -> pd.DataFrame:
    """The listed files as pandas rows of LISTING_SCHEMA (raw_images plans from them on the
    driver; those to read become a local relation in the JVM, through Arrow)."""
    columns = ("path", "split", "label", "reason", "identity")
    return pd.DataFrame({c: [getattr(f, c) for f in listed] for c in columns})


def raw_images_frame(spark, listing, root: str, storage, read_root: bool):
    """Listed files (`listing_rows`, in Spark) -> a DataFrame of each file's bytes and,
    for a file that is not a usable image, why (stage `listing`, `read` or `decode`).

    The Python workers read each listed file (through the OS, or boto3 for s3://), and say why
    when they cannot. One exception: with `read_root` (every file of the root is to be read: a
    first run) and an s3:// root that this Spark can read (EMR), Spark reads the bytes itself
    (its `binaryFile` source, in the JVM), and the workers read only what it did not return (an
    empty object). A local root is always read by the workers: Spark's source lists the root
    again and joins its files to the listing (a shuffle), which took 10.7 s where the workers
    took 8.2 s for 6,000 photos in a new JVM (2.8-4.1 s vs 1.9-3.0 s in a warm one; one-off
    timings of this function on 2 cores, 2026-12-05). Only the driver's listing decides which files
    there are: none is dropped.

    Each file gets its content's sha256 (`fingerprint`) and is decoded once to check it
    (`checked`).
    """
    from pyspark.sql import functions as F

    contents = _spark_read_bytes(spark, root) if read_root and is_s3(root) else None
    if contents is not None:
        # Every listed file stays, with or without its bytes; a file Spark sees but the listing
        # does not (added since) is left out.
        frame = listing.join(contents, "path", "left")
    else:
        frame = listing.withColumn("content", F.lit(None).cast("binary"))
    columns = frame.select("path", "split", "label", "reason", "identity", "content")
    return columns.mapInPandas(_read_and_check_with(storage), RAW_SCHEMA)


def raw_images_summary(computed, kept: pd.DataFrame | None) -> dict:
    """Files and bytes by verdict, of the files read in this run (one job on small columns of
    `computed`) and of the reused ones (`kept`: their stage and size, from the planning)."""
    from pyspark.sql import functions as F

    rows = [
        r.asDict()
        for r in computed.groupBy("stage", "checked")
        .agg(F.count(F.lit(1)).alias("files"), F.sum("size").alias("bytes"))
        .collect()
    ]
    if kept is not None:
        for stage, group in kept.groupby(kept["stage"].fillna(""), sort=False):
            rows.append({"stage": stage or None, "checked": False, "files": len(group), "bytes": group["size"].sum()})
    by_stage = {}
    for row in rows:
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + row["files"]
    return {
        "images": by_stage.get(None, 0),
        "unreadable": by_stage.get("read", 0),
        "undecodable": by_stage.get("decode", 0),
        "decoded_to_check": sum(r["files"] for r in rows if r["checked"]),
        "checks_reused": sum(r["files"] for r in rows if not r["checked"] and r["stage"] in (None, "decode")),
        "total_bytes": int(sum(r["bytes"] or 0 for r in rows)),
    }


def _spark_read_bytes(spark, root: str):
    """(path, content) of every file under the s3:// `root` read by Spark, or None if this Spark
    cannot read that file system (pyspark from PyPI)."""

    try:
        files = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("ignoreMissingFiles", "true")
            .option("ignoreCorruptFiles", "true")
            .load(root)
        )
    except Exception as error:
        if is_missing_filesystem(error):
            return None
        raise
    return files.select("path", "content")


def _read_and_check_with(storage):
    @on_worker
    def check(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """Each listed file's rejection reason, if any: from the listing, unreadable, or not a
        usable image (decoded once here, so later stages only see images that decode)."""
        for batch in batches:
            reasons, stages, sizes, fingerprints, checked, contents = [], [], [], [], [], []
            for path, reason, content in zip(batch["path"], batch["reason"], batch["content"], strict=True):
                stage, fingerprint, decoded = (None if reason is None else "listing"), None, False
                if reason is None and content is None:
                    try:
                        content = storage.read_bytes(path)
                    except Exception as error:  # unreadable file: quarantined, with the error
                        reason, stage = f"unreadable file: {type(error).__name__}: {error}", "read"
                if content is not None:
                    fingerprint = hashlib.sha256(content).hexdigest()
                if reason is None:
                    decoded = True
                    try:
                        open_image(content)
                    except ImageRejected as rejected:
                        reason, stage = str(rejected), "decode"
                reasons.append(reason)
                stages.append(stage)
                sizes.append(len(content) if content is not None else None)
                fingerprints.append(fingerprint)
                checked.append(decoded)
                contents.append(content)
            yield batch.assign(
                reason=reasons, stage=stages, size=sizes, fingerprint=fingerprints, checked=checked, content=contents
            )[list(RAW_COLUMNS)]

    return check


# -- preprocessed_images ------------------------------------------------------------------------
PREPROCESSED_SCHEMA = "path string, split string, label string, fingerprint string, image binary"
# The stored columns of preprocessed_images (`image_size` is added by the asset).
PREPROCESSED_COLUMNS = ("path", "split", "label", "fingerprint", "image", "image_size")


def preprocess_frame(images, image_size: int):
    """Decode, convert to RGB and resize every image (rows `raw_images` found decodable)."""

    @on_worker
    def decode(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            arrays = [array_to_bytes(decode_image(content, image_size)) for content in batch["content"]]
            yield batch.drop(columns=["content"]).assign(image=arrays)

    return images.select("path", "split", "label", "fingerprint", "content").mapInPandas(decode, PREPROCESSED_SCHEMA)


def as_vectors(features):
    from pyspark.ml.functions import array_to_vector

    return features.withColumn("features", array_to_vector("features"))


# -- pca_features_csv ---------------------------------------------------------------------------
def project_frame(features, spark_model):
    from pyspark.ml.functions import vector_to_array

    return spark_model.transform(as_vectors(features)).select(
        "path", "label", "split", vector_to_array("pca").alias("pcs")
    )  # ordered when written (csv_table.write_csv)
