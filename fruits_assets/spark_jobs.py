"""The Spark side of each stage: DataFrames in, DataFrames out, the pure functions run per batch.

Nothing here collects images or features to the driver; the CSV is streamed partition by
partition (`toLocalIterator`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import pandas as pd

from fruits_assets.images import ImageRejected, array_to_bytes, decode_image, open_image
from fruits_assets.listing import ListedFile
from fruits_assets.python_workers import on_worker
from fruits_assets.stored_files import Inheriting, relative_to_asset, stored_file


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


def split_for_work(stored, rows: int, spark, rows_per_partition: int, scanned_rows: int | None = None):
    """A stored (Parquet) stage read in partitions of about `rows_per_partition` rows: every core
    busy to the end, and progress reported a partition at a time.

    Each file the previous stage wrote holds about that many rows (one per task); asking Spark
    for at least that many partitions (`spark.sql.files.minPartitionNum`) makes each file its
    own partition, without a shuffle (which would move every image's bytes once more). Only
    when the files are fewer (written otherwise) is the frame repartitioned.

    That setting applies to every file scan of the job, not only to `stored`: an incremental stage
    also reads the rows it reuses from the previous version, so the setting is sized from all the
    rows the job reads (`scanned_rows`), else those files are packed into a few huge partitions
    (5,995 reused images at 224 px in 2 tasks ran the JVM out of heap).
    """
    wanted = partitions_for(rows, spark, rows_per_partition)
    scans = partitions_for(max(rows, scanned_rows or 0), spark, rows_per_partition)
    spark.conf.set("spark.sql.files.minPartitionNum", str(scans))
    if stored.rdd.getNumPartitions() * 2 >= wanted:
        return stored
    return stored.repartition(wanted)


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


def listing_frame(spark, listed: list[ListedFile]):
    """The listed files as a DataFrame (from pandas, through Arrow: a local relation in the JVM,
    no Python job to build it)."""
    columns = ("path", "split", "label", "reason", "identity")
    return spark.createDataFrame(pd.DataFrame({c: [getattr(f, c) for f in listed] for c in columns}), LISTING_SCHEMA)


def raw_images_frame(spark, listing, rows: int, root: str, storage, rows_per_partition: int, read_root: bool):
    """Listed files (`listing_frame`, `rows` of them) -> a DataFrame of each file's bytes and,
    for a file that is not a usable image, why (stage `listing`, `read` or `decode`).

    With `read_root` (every file of the root is to be read: a first run), the bytes are read by
    Spark itself (its `binaryFile` source, in the JVM) where it can read the root (local folders;
    s3:// on EMR). A file it does not return (an empty file, a dangling link), every file where
    Spark cannot read the root (s3:// with pyspark from PyPI), and every file of an incremental
    run (a few new ones: Spark would list and read the whole root to find them) is read by the
    Python workers through boto3 or the OS, which say why when they cannot. Only the driver's
    listing decides which files there are: none is dropped.

    Each file gets its content's sha256 (`fingerprint`) and is decoded once to check it
    (`checked`).
    """
    from pyspark.sql import functions as F

    contents = _spark_read_bytes(spark, root) if read_root else None
    if contents is not None:
        # Every listed file stays, with or without its bytes; a file Spark sees but the listing
        # does not (added since) is left out.
        frame = listing.join(contents, "path", "left")
    else:
        frame = listing.repartition(partitions_for(rows, spark, rows_per_partition))
        frame = frame.withColumn("content", F.lit(None).cast("binary"))
    columns = frame.select("path", "split", "label", "reason", "identity", "content")
    return columns.mapInPandas(_checked_with(storage), RAW_SCHEMA)


def _spark_read_bytes(spark, root: str):
    """(path, content) of every file under `root` read by Spark, or None if this Spark cannot
    read that file system (pyspark from PyPI and s3://)."""
    from pyspark.sql import functions as F

    try:
        files = (
            spark.read.format("binaryFile")
            .option("recursiveFileLookup", "true")
            .option("ignoreMissingFiles", "true")
            .option("ignoreCorruptFiles", "true")
            .load(root)
        )
    except Exception as error:
        if "No FileSystem for scheme" in str(error) or "UnsupportedFileSystemException" in str(error):
            return None
        raise
    # Spark names local files file:/...; the listing names them as the operating system does.
    return files.select(F.regexp_replace("path", "^file:", "").alias("path"), "content")


def _checked_with(storage):
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


# At most this many earlier versions' files are kept by reference in a version; beyond, the
# reused rows are written again into one version (a compaction), so a stage never reads from
# more than this many folders, however many small incremental runs came before.
MAX_INHERITED_VERSIONS = 8
# A version also compacts when more than this share of the rows in the files it would inherit
# are excluded ones (read and filtered out by every reader: rewriting once is then cheaper), or
# when they are more than MAX_EXCLUDED_ROWS: each is a literal of the readers' filter, and
# PySpark builds such a list one call to the JVM per literal (10,000 took 14 s here).
MAX_EXCLUDED_SHARE = 0.25
MAX_EXCLUDED_ROWS = 1_000


@dataclass
class ReusePlan:
    """What an incremental stage keeps from the previous version of its asset, and what it computes.

    - `inherited`: Parquet files of the previous version (paths relative to the asset's folder,
      `<version>/<file>`) holding at least one row still valid: the new version includes them by
      reference (`stored_files.Inheriting`), they are neither read nor written again;
    - `excluded`: the rows of those files that the new version does not include (a changed,
      deleted or otherwise outdated image), as (`<version>/<file>`, path) pairs;
    - `copied`: when the version compacts (see `reuse_plan`), every still-valid stored row,
      written again into the new version; else None;
    - `new`: the rows of the current input that no stored row matches: to compute;
    - `kept`: the reused rows' keys and `carried` columns (pandas, from the planning itself).
    """

    inherited: list[str]
    copied: object | None  # DataFrame of stored rows, or None
    new: object  # DataFrame of input rows
    counts: dict  # reused, computed, removed (rows of the previous version not kept)
    copied_rows: int = 0
    excluded: list = field(default_factory=list)
    scanned_rows: int = 0  # rows the job that writes the new version reads (new + copied)
    kept: pd.DataFrame | None = None

    def output(self, computed):
        """The new version: the computed rows, the copied rows, and the inherited files (a plain
        DataFrame when nothing is inherited, e.g. a first run, or an asset invoked directly in a
        unit test, where the next asset gets this value itself)."""
        frame = computed if self.copied is None else self.copied.select(*computed.columns).unionByName(computed)
        if not self.inherited:
            return frame
        return Inheriting(frame, self.inherited, self.copied_rows + self.counts["computed"], self.excluded)


def reuse_plan(stored, valid, current, keys: list[str], columns, carried: tuple = ()) -> ReusePlan:
    """Plan an incremental stage: `stored` is the previous version (or None), `valid` a Column
    that is true for stored rows made with the same settings (image size, model), `current` the
    stage's input, `keys` what identifies an input (path and content hash), `columns` those of
    the stage's output (a stored file with other columns is copied, never inherited), `carried`
    small stored columns the caller wants for the reused rows (`ReusePlan.kept`).

    Planning reads small columns only (Parquet reads them alone), in three jobs without a
    shuffle: each row's file and keys, of the stored version (as its readers see it), of every
    row of its files (also those it already excluded, so that an inherited file's exclusions
    carry over to the next version) and of the input. They are planned on the driver, as pandas
    frames (the keys are what a broadcast join would collect there anyway). Stored images or
    vectors are neither read nor shuffled. A row with a null key matches nothing (as in a join).

    The version compacts (writes every reused row again, inherits nothing) when the stored
    columns differ from the output's, when it would read from more than MAX_INHERITED_VERSIONS
    folders, or when more than MAX_EXCLUDED_SHARE of the inherited files' rows (or more than
    MAX_EXCLUDED_ROWS) are excluded.
    """
    from pyspark.sql import functions as F

    if stored is None:
        rows = current.count()
        return ReusePlan([], None, current, {"reused": 0, "computed": rows, "removed": 0}, scanned_rows=rows)
    files = [unquote(file) for file in stored.inputFiles()]  # URL-encoded URIs
    physical = (  # every row of the stored files
        stored.sparkSession.read.schema(stored.schema).parquet(*files).select(stored_file().alias("_file"), "path")
    ).toPandas()
    seen = stored.select(  # the rows a reader of the stored version sees
        stored_file().alias("_file"), F.coalesce(valid, F.lit(False)).alias("_valid"), *keys, *carried
    ).toPandas()
    inputs = current.select(F.input_file_name().alias("_uri"), stored_file().alias("_file"), *keys).toPandas()
    wanted = inputs[keys][inputs[keys].notna().all(axis=1)].drop_duplicates()
    seen = seen.merge(wanted.assign(_wanted=True), on=keys, how="left")
    seen["_kept"] = seen["_valid"] & seen["_wanted"].notna() & seen[keys].notna().all(axis=1)
    per_file = pd.DataFrame(
        {
            "rows": physical.groupby("_file").size(),
            "seen": seen.groupby("_file").size(),
            "kept": seen.groupby("_file")["_kept"].sum(),
        }
    ).fillna(0)
    kept_files = per_file[per_file["kept"] > 0]
    inherited = [file for file in kept_files.index if relative_to_asset(file) is not None]
    reused, removed = int(per_file["kept"].sum()), int(per_file["seen"].sum() - per_file["kept"].sum())
    dead = int((kept_files["rows"] - kept_files["kept"]).sum())
    if (
        set(stored.columns) != set(columns)
        or len({file.split("/")[0] for file in inherited}) > MAX_INHERITED_VERSIONS
        or dead > MAX_EXCLUDED_SHARE * kept_files["rows"].sum()
        or dead > MAX_EXCLUDED_ROWS
        or len(inherited) < len(kept_files)  # a file outside a version folder
    ):
        inherited = []  # compaction: every reused row is written again
    excluded = []
    if inherited and dead:  # the rows of inherited files that the new version does not keep
        kept = seen[seen["_kept"]][["_file", "path"]].assign(_kept=True)
        rows = physical[physical["_file"].isin(inherited)].merge(kept, on=["_file", "path"], how="left")
        excluded = sorted(
            [file, path] for file, path in rows[rows["_kept"].isna()][["_file", "path"]].itertuples(index=False)
        )
    copied = None
    if not inherited and reused:
        copied = stored.where(valid).join(F.broadcast(current.select(*keys)), keys, "left_semi")
    stored_keys = seen[seen["_valid"]][keys].dropna().drop_duplicates()
    new, computed, scanned = _new_rows(current, inputs, stored_keys, stored.where(valid).select(*keys).distinct(), keys)
    counts = {"reused": reused, "computed": computed, "removed": removed}
    copied_rows = 0 if inherited else reused
    copy_reads = 0 if inherited else int(per_file["rows"].sum())  # the excluded rows too
    kept_rows = seen[seen["_kept"]][[*keys, *carried]]
    return ReusePlan(sorted(inherited), copied, new, counts, copied_rows, excluded, scanned + copy_reads, kept_rows)


# New rows are read from the files that hold them alone when at most this many (their keys are
# broadcast to pick them out); more, and they are picked out of every file of the input.
MAX_NEW_ROWS_PICKED_BY_FILE = 100_000


def _new_rows(current, inputs: pd.DataFrame, stored_keys: pd.DataFrame, stored_frame, keys: list[str]):
    """(the rows of `current` whose keys are not among the stored ones, how many, how many rows
    the job that computes them reads). `inputs`: the input's (_uri, _file, keys) per row, and
    `stored_keys` the stored (valid) keys, as pandas; `stored_frame` the same keys in Spark.

    An anti-join on `current` reads every row's every column: every image of the input, to keep
    the few new ones. When the input is stored Parquet and only some of its files hold new rows
    (an incremental run: its own new files), those files alone are read, and the new rows picked
    out of them by their (file, keys) as seen through `current` (so rows an input version
    excludes stay excluded): a local table of at most MAX_NEW_ROWS_PICKED_BY_FILE small rows.
    An input that is not read from files (raw_images' listing) is picked from by its keys alone.
    """
    from pyspark.sql import functions as F

    matched = inputs.merge(stored_keys.assign(_stored=True), on=keys, how="left")["_stored"].notna()
    matched &= inputs[keys].notna().all(axis=1).to_numpy()  # a null key matches nothing
    fresh = inputs[~matched.to_numpy()]
    computed = len(fresh)
    if computed == 0:  # an empty local relation: the job that writes reads no input file
        return current.limit(0), 0, 0
    rows_per_uri = inputs.groupby("_uri").size()
    holding = sorted(set(fresh["_uri"]))
    spark = current.sparkSession
    if computed <= MAX_NEW_ROWS_PICKED_BY_FILE and not any(rows_per_uri.index):
        # Not read from files (raw_images' listing, a local relation): the new rows are picked
        # by their keys, null-safe (a row with a null key is new), and the stored version is not
        # read again (an anti-join with its keys took 4 Spark jobs, ~2 s, in raw_images).
        wanted = spark.createDataFrame(fresh[keys].drop_duplicates(), current.select(*keys).schema)
        matches = [current[key].eqNullSafe(wanted[key]) for key in keys]
        return current.join(F.broadcast(wanted), matches, "left_semi"), computed, len(inputs)
    if computed > MAX_NEW_ROWS_PICKED_BY_FILE or len(holding) == len(rows_per_uri) or not all(rows_per_uri.index):
        everything = current.join(F.broadcast(stored_frame), keys, "left_anti")
        return everything, computed, len(inputs)
    schema = current.select(stored_file().alias("_file"), *keys).schema
    wanted = spark.createDataFrame(fresh[["_file", *keys]], schema)  # a local table: no other file read
    picked = (
        spark.read.schema(current.schema)
        .parquet(*[unquote(uri) for uri in holding])  # Spark names files as URL-encoded URIs
        .withColumn("_file", stored_file())
        .join(F.broadcast(wanted), ["_file", *keys], "left_semi")
        .drop("_file")
    )
    return picked, computed, int(rows_per_uri[holding].sum())


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
