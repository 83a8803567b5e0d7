"""Incremental reuse, all of it: what a stage keeps from its asset's previous version, what it
computes, how the new version stores both, and how a reader sees that version.

A stage (`raw_images`, `preprocessed_images`, `image_features`) identifies each input row by its
keys (path and content hash). A stored row whose keys are still in the input, made with the same
settings (image size, model), is reused; the other input rows are computed. `run_stage` is the
one recipe the three assets follow: plan, size the work, compute what is new, report.

How a new version stores the reused rows (`reuse_plan` decides):
- **by reference**: whole Parquet files of earlier versions are part of the new version
  (`inherits` in its manifest, `<version>/<file>` relative to the asset's folder), neither read
  nor written again; rows of those files that the new version no longer holds (a changed or
  deleted image) are hidden from its readers (`excludes`: (`<version>/<file>`, path) pairs). A
  path identifies a row within one file (a version has one row per image), so an exclusion never
  hides a row of another file, e.g. the new row of an image whose bytes changed back;
- **copied** (a compaction): every reused row written again into the new version, when the
  stored columns differ, when the version would read from more than MAX_INHERITED_VERSIONS
  folders, or when too many of the inherited files' rows would be excluded.

The IO manager stores an `IncrementalFrame` and reads a version back with `read_version`;
`versions.py` never deletes a folder that a kept version inherits from (`versions_read_by`).

Whole versions are reused too. Each asset's version records a data version (a digest of what it
holds: its rows' keys and the settings that made them, or its inputs' data versions) and the
signature of what it was made from (its inputs' data versions, its settings, its code version).
A step whose signature is its current version's finds nothing new (`unchanged_version`): it
returns `Unchanged`, records the same data version in Dagster and computes nothing. Its inputs
are `StoredFrame`s, read on first use, so such a step neither starts Spark nor reads Parquet.
Dagster's own provenance is not used for this decision: a `dagster asset materialize` without a
DAGSTER_HOME keeps no history, and on EMR the stored manifests are what every step can read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import pandas as pd

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
# New rows are read from the files that hold them alone when at most this many (their keys are
# broadcast to pick them out); more, and they are picked out of every file of the input.
MAX_NEW_ROWS_PICKED_BY_FILE = 100_000
# (<version>/<file>, path) pairs joined by this character, which no path holds.
_SEP = "\u0000"


# -- the stored side: a version that includes files of earlier ones ------------------------------
@dataclass
class IncrementalFrame:
    """A DataFrame to store as a new Parquet version that also includes, by reference, whole
    files of earlier versions of the same asset, but for their `excluded` rows."""

    frame: object
    inherited: list[str]
    rows_written: int
    excluded: list[list[str]] = field(default_factory=list)


def stored_file():
    """A Column: `<version>/<file>` of the Parquet file each row is read from (the last two
    segments of the URI Spark names it by; version and file names need no URL-encoding)."""
    from pyspark.sql import functions as F

    parts = F.split(F.input_file_name(), "/")
    return F.concat_ws("/", F.element_at(parts, -2), F.element_at(parts, -1))


def relative_to_asset(file_uri: str) -> str | None:
    """`<version>/<file>` of a stored Parquet file (as Spark names it), or None if it is not in
    a version folder (then its rows are copied, not inherited)."""
    parts = file_uri.rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2].startswith("v-") or not parts[-1].endswith(".parquet"):
        return None
    return f"{parts[-2]}/{parts[-1]}"


def read_version(spark, own_uri: str, inherited_uris: list[str], excluded: list[list[str]], schema: dict | None = None):
    """A stored version as one DataFrame: its own files, the inherited ones, without the
    excluded rows (a filter on file and path, evaluated as the files are scanned). With the
    `schema` it was written with (a StructType's JSON), Spark reads no footer to infer it."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    reader = spark.read if schema is None else spark.read.schema(StructType.fromJson(schema))
    frame = reader.parquet(own_uri, *inherited_uris)
    if not excluded:
        return frame
    hidden = [f"{file}{_SEP}{path}" for file, path in excluded]
    return frame.where(~F.concat_ws(_SEP, stored_file(), F.col("path")).isin(hidden))


def versions_read_by(manifest: dict | None) -> set[str]:
    """The version folders a reader of this manifest opens: its own, and those of the files it
    includes by reference (`inherits`)."""
    if not manifest:
        return set()
    return {manifest.get("version"), *(relative.split("/")[0] for relative in manifest.get("inherits", []))}


class StoredFrame:
    """A stored Parquet version as a step's input: its manifest at once, its Spark DataFrame on
    first use. Anything else is the DataFrame's (`raw_images.where(...)`, `join(stored)`), so an
    asset reads it as a DataFrame, and a step that finds nothing new never starts Spark."""

    def __init__(self, manifest: dict, load: Callable):
        self.manifest = manifest
        self._load = load
        self._frame = None

    @property
    def frame(self):
        if self._frame is None:
            self._frame = self._load()
        return self._frame

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("manifest", "_load", "_frame"):
            raise AttributeError(name)
        return getattr(self.frame, name)

    def __getitem__(self, item):
        return self.frame[item]

    def __repr__(self) -> str:
        return f"StoredFrame({self.manifest.get('asset')} {self.manifest.get('version')})"


# -- whole versions: data versions, signatures, unchanged steps -----------------------------------------
def digest(*parts) -> str:
    """A short, stable digest of JSON-able parts (a data version, a signature)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def keys_digest(keys: pd.DataFrame, *settings) -> str:
    """The data version of rows identified by `keys` (path and content hash), made with `settings`."""
    rows = sorted(keys.astype(str).itertuples(index=False, name=None))
    return digest([list(row) for row in rows], *settings)


@dataclass(frozen=True)
class Unchanged:
    """An asset's output when it was made from the same inputs and settings as its current
    version: that version stays current, nothing is computed or written."""

    manifest: dict


def input_versions(context, *assets: str) -> dict | None:
    """{asset: data version} of the versions this run reads for `assets`, from their manifests
    (none is read); None outside a run (an asset invoked as a function) or when one has none."""
    io_manager = getattr(context.resources, "io_manager", None)
    if not hasattr(io_manager, "store"):
        return None
    store = io_manager.store()
    versions = {asset: store.for_run(asset, context.run.run_id).get("data_version") for asset in assets}
    return versions if all(versions.values()) else None


def current_version(context, asset: str) -> dict | None:
    """The manifest of the asset's version this run started with (None: none, or no run)."""
    io_manager = getattr(context.resources, "io_manager", None)
    if not hasattr(io_manager, "store"):
        return None
    return io_manager.store().started_with(asset, context.run.run_id)


def unchanged_version(context, asset: str, signature: str | None) -> dict | None:
    """The asset's version this run started with, if it was made from the same inputs and
    settings (`signature`, None: unknown): this run's step then computes nothing."""
    manifest = current_version(context, asset) if signature is not None else None
    if manifest and manifest.get("signature") == signature and manifest.get("data_version"):
        return manifest
    return None


def unchanged_output(manifest: dict, metadata: dict | None = None):
    """What a step that found nothing new returns: the same data version, and why."""
    import dagster as dg

    return dg.Output(
        Unchanged(manifest),
        data_version=dg.DataVersion(manifest["data_version"]),
        metadata={
            "unchanged": f"inputs and settings as for version {manifest['version']}: nothing computed, it stays current",
            "version": manifest["version"],
            **({"rows": manifest["rows"]} if manifest.get("rows") is not None else {}),
            "data_version": manifest["data_version"],
            "signature": manifest.get("signature") or "",
            **(metadata or {}),
        },
    )


def versioned_output(value, data_version: str, signature: str | None, metadata: dict):
    """A step's new output, with its data version (for Dagster) and signature (for the next run)."""
    import dagster as dg

    return dg.Output(
        value,
        data_version=dg.DataVersion(data_version),
        metadata={**metadata, "data_version": data_version, "signature": signature or ""},
    )


# -- planning a stage --------------------------------------------------------------------------------
@dataclass
class ReusePlan:
    """What an incremental stage keeps from the previous version of its asset, and what it computes.

    - `inherited`: Parquet files of the previous version holding at least one row still valid:
      the new version includes them by reference;
    - `excluded`: the rows of those files that the new version does not include, as
      (`<version>/<file>`, path) pairs;
    - `copied`: when the version compacts, every still-valid stored row, written again into the
      new version; else None;
    - `new`: the rows of the current input that no stored row matches: to compute;
    - `kept`: the reused rows' keys and `reported` columns (pandas, from the planning itself).
    """

    inherited: list[str]
    copied: object | None  # DataFrame of stored rows, or None
    new: object  # DataFrame of input rows
    counts: dict  # reused, computed, removed (rows of the previous version not kept)
    copied_rows: int = 0
    excluded: list = field(default_factory=list)
    scanned_rows: int = 0  # rows the job that writes the new version reads (new + copied)
    kept: pd.DataFrame | None = None
    input_keys: pd.DataFrame | None = None  # the keys of every input row: the new version's rows

    def output(self, computed):
        """The new version: the computed rows, the copied rows, and the inherited files (a plain
        DataFrame when nothing is inherited, e.g. a first run)."""
        frame = computed if self.copied is None else self.copied.select(*computed.columns).unionByName(computed)
        if not self.inherited:
            return frame
        return IncrementalFrame(frame, self.inherited, self.copied_rows + self.counts["computed"], self.excluded)


@dataclass
class DriverRows:
    """A stage's input listed on the driver (raw_images' listing of the images root), as pandas:
    it is planned as it is, and only the rows to compute become a Spark DataFrame (a local
    relation). Sending every listed row to the JVM and collecting their keys back cost 2.1 s and
    a Spark job at 24,000 photos, to find 300 new ones."""

    rows: pd.DataFrame
    spark: object
    schema: str  # of `rows` in Spark (a DDL string)

    def to_spark(self, rows: pd.DataFrame | None = None):
        """These rows (default: all) as a Spark DataFrame."""
        return self.spark.createDataFrame(self.rows if rows is None else rows, self.schema)


def input_rows(current, keys: list[str]) -> pd.DataFrame:
    """(_uri, _file, keys) of each input row, in the input's order: the file a stored input's
    row is read from (as Spark names it, and as `<version>/<file>`); empty strings for rows
    listed on the driver."""
    from pyspark.sql import functions as F

    if isinstance(current, DriverRows):
        return current.rows[keys].reset_index(drop=True).assign(_uri="", _file="")
    return current.select(F.input_file_name().alias("_uri"), stored_file().alias("_file"), *keys).toPandas()


def reuse_plan(stored, valid, current, keys: list[str], columns, reported: tuple = ()) -> ReusePlan:
    """Plan an incremental stage: `stored` is the previous version (or None), `valid` a Column
    that is true for stored rows made with the same settings (image size, model), `current` the
    stage's input (a DataFrame, or `DriverRows`), `keys` what identifies an input (path and
    content hash), `columns` those of the stage's output (a stored file with other columns is
    copied, never inherited), `reported` small stored columns the caller wants for the reused
    rows (`ReusePlan.kept`).

    Planning reads small columns only (Parquet reads them alone), in three jobs without a
    shuffle: each row's file and keys, of the stored version as its readers see it, of every
    row of its files (also those it already excludes, so that an inherited file's exclusions
    carry over to the next version) and of the input (none for `DriverRows`: they are on the
    driver already). They are planned on the driver, as pandas
    frames (the keys are what a broadcast join would collect there anyway). Stored images or
    vectors are neither read nor shuffled. A row with a null key matches nothing (as in a join).

    The version compacts (writes every reused row again, inherits nothing) when the stored
    columns differ from the output's, when it would read from more than MAX_INHERITED_VERSIONS
    folders, or when more than MAX_EXCLUDED_SHARE of the inherited files' rows (or more than
    MAX_EXCLUDED_ROWS) are excluded.
    """
    from pyspark.sql import functions as F

    if stored is None:
        keys_of_inputs = input_rows(current, keys)[keys]
        rows = len(keys_of_inputs)
        return ReusePlan(
            [],
            None,
            current.to_spark() if isinstance(current, DriverRows) else current,
            {"reused": 0, "computed": rows, "removed": 0},
            scanned_rows=rows,
            input_keys=keys_of_inputs,
        )
    files = [unquote(file) for file in stored.inputFiles()]  # URL-encoded URIs
    rows_in_files = (  # every row of the stored files, excluded ones included
        stored.sparkSession.read.schema(stored.schema).parquet(*files).select(stored_file().alias("_file"), "path")
    ).toPandas()
    rows_as_read = stored.select(  # the rows a reader of the stored version sees
        stored_file().alias("_file"), F.coalesce(valid, F.lit(False)).alias("_valid"), *keys, *reported
    ).toPandas()
    inputs = input_rows(current, keys)
    wanted = inputs[keys][inputs[keys].notna().all(axis=1)].drop_duplicates()
    rows_as_read = rows_as_read.merge(wanted.assign(_wanted=True), on=keys, how="left")
    rows_as_read["_kept"] = (
        rows_as_read["_valid"] & rows_as_read["_wanted"].notna() & rows_as_read[keys].notna().all(axis=1)
    )
    per_file = pd.DataFrame(
        {
            "rows": rows_in_files.groupby("_file").size(),
            "read": rows_as_read.groupby("_file").size(),
            "kept": rows_as_read.groupby("_file")["_kept"].sum(),
        }
    ).fillna(0)
    kept_files = per_file[per_file["kept"] > 0]
    inherited = [file for file in kept_files.index if relative_to_asset(file) is not None]
    reused, removed = int(per_file["kept"].sum()), int(per_file["read"].sum() - per_file["kept"].sum())
    hidden_rows = int((kept_files["rows"] - kept_files["kept"]).sum())  # rows of kept files, not kept
    if (
        set(stored.columns) != set(columns)
        or len({file.split("/")[0] for file in inherited}) > MAX_INHERITED_VERSIONS
        or hidden_rows > MAX_EXCLUDED_SHARE * kept_files["rows"].sum()
        or hidden_rows > MAX_EXCLUDED_ROWS
        or len(inherited) < len(kept_files)  # a file outside a version folder
    ):
        inherited = []  # compaction: every reused row is written again
    excluded = []
    if inherited and hidden_rows:  # the rows of inherited files that the new version does not keep
        kept = rows_as_read[rows_as_read["_kept"]][["_file", "path"]].assign(_kept=True)
        rows = rows_in_files[rows_in_files["_file"].isin(inherited)].merge(kept, on=["_file", "path"], how="left")
        excluded = sorted(
            [file, path] for file, path in rows[rows["_kept"].isna()][["_file", "path"]].itertuples(index=False)
        )
    copied = None
    if not inherited and reused:
        wanted = (current.to_spark() if isinstance(current, DriverRows) else current).select(*keys)
        copied = stored.where(valid).join(F.broadcast(wanted), keys, "left_semi")
    stored_keys = rows_as_read[rows_as_read["_valid"]][keys].dropna().drop_duplicates()
    new, computed, scanned = _new_rows(current, inputs, stored_keys, stored.where(valid).select(*keys).distinct(), keys)
    counts = {"reused": reused, "computed": computed, "removed": removed}
    copied_rows = 0 if inherited else reused
    copy_reads = 0 if inherited else int(per_file["rows"].sum())  # the excluded rows too
    kept_rows = rows_as_read[rows_as_read["_kept"]][[*keys, *reported]]
    return ReusePlan(
        sorted(inherited), copied, new, counts, copied_rows, excluded, scanned + copy_reads, kept_rows, inputs[keys]
    )


def _new_rows(current, inputs: pd.DataFrame, stored_keys: pd.DataFrame, stored_frame, keys: list[str]):
    """(the rows of `current` whose keys are not among the stored ones, how many, how many rows
    the job that computes them reads). `inputs`: the input's (_uri, _file, keys) per row, and
    `stored_keys` the stored (valid) keys, as pandas; `stored_frame` the same keys in Spark.

    An anti-join on `current` reads every row's every column: every image of the input, to keep
    the few new ones. When the input is stored Parquet and only some of its files hold new rows
    (an incremental run: its own new files), those files alone are read, and the new rows picked
    out of them by their (file, keys) as seen through `current` (so rows an input version
    excludes stay excluded): a local table of at most MAX_NEW_ROWS_PICKED_BY_FILE small rows.
    An input listed on the driver (`DriverRows`: raw_images' listing) gives its new rows alone to
    Spark; the stored version is not read again (an anti-join with its keys took 4 Spark jobs,
    ~2 s, in raw_images).
    """
    from pyspark.sql import functions as F

    matched = inputs.merge(stored_keys.assign(_stored=True), on=keys, how="left")["_stored"].notna()
    matched &= inputs[keys].notna().all(axis=1).to_numpy()  # a null key matches nothing
    fresh = inputs[~matched.to_numpy()]
    computed = len(fresh)
    if isinstance(current, DriverRows):  # listed on the driver: the new rows alone go to Spark
        return current.to_spark(current.rows.reset_index(drop=True)[~matched.to_numpy()]), computed, computed
    if computed == 0:  # an empty local relation: the job that writes reads no input file
        return current.limit(0), 0, 0
    rows_per_uri = inputs.groupby("_uri").size()
    holding = sorted(set(fresh["_uri"]))
    spark = current.sparkSession
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


# -- running a stage -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """How an incremental asset's rows are identified and stored."""

    asset: str
    keys: tuple[str, ...]  # what identifies an input row: its path and a hash of its content
    columns: tuple[str, ...]  # the stored columns
    reported: tuple[str, ...] = ()  # small stored columns the asset reports for its reused rows


@dataclass
class StageRun:
    """A stage's outcome: the new version to store (or the current one, unchanged), what was
    computed, what was reused, and the data version of what the asset now holds."""

    output: object  # a DataFrame, an IncrementalFrame, or Unchanged
    computed: object  # the DataFrame of the rows computed in this run (lazy)
    counts: dict  # reused, computed, removed
    kept: pd.DataFrame | None  # the reused rows' keys and reported columns
    data_version: str

    @property
    def metadata(self) -> dict:
        """What every incremental asset reports about its reuse."""
        by_reference = self.counts["reused"] if isinstance(self.output, IncrementalFrame) else 0
        return {**self.counts, "reused_by_reference": by_reference}

    def result(self, signature: str | None, metadata: dict):
        """The step's Output: the new version, or the current one if it holds the same rows."""
        if isinstance(self.output, Unchanged):
            return unchanged_output(self.output.manifest, {**self.metadata, **metadata})
        return versioned_output(self.output, self.data_version, signature, {**self.metadata, **metadata})


def previous_version(context, stage: Stage):
    """The stage asset's version that was current when this run started, if it has the stage's
    columns (a version written before them cannot be reused), with its manifest: what the stage
    starts from. (None, None) for an asset invoked directly (a unit test): all is computed."""
    manifest = current_version(context, stage.asset)
    previous = context.resources.io_manager.load_manifest(manifest) if manifest is not None else None
    if previous is None or not set(stage.columns) <= set(previous.columns):
        return None, None
    return previous, manifest


def run_stage(
    context, stage: Stage, inputs, same_settings, compute: Callable, rows_per_partition: int, settings: tuple
) -> StageRun:
    """Plan, size, compute and report one incremental stage.

    `inputs`: the stage's input rows (a stored asset, or raw_images' listing); `same_settings`:
    a Column true for stored rows made with this run's settings, `settings` the same as values
    (part of the data version); `compute(work, counts)`: the stage's own work on the rows to
    compute (a DataFrame in partitions of about `rows_per_partition` rows), returning rows of the
    stage's columns. Nothing is computed when nothing is new; when the stage would hold exactly
    the rows of its current version, that version stays (`Unchanged`).
    """
    from fruits_assets.spark_jobs import repartition_for_work, size_file_scans

    previous, manifest = previous_version(context, stage)
    plan = reuse_plan(previous, same_settings, inputs, list(stage.keys), stage.columns, stage.reported)
    counts = plan.counts
    data_version = keys_digest(plan.input_keys, *settings)
    context.log.info(
        f"{stage.asset}: {counts['computed']} rows to compute, {counts['reused']} reused, "
        f"{counts['removed']} removed since the last version"
    )
    if manifest is not None and manifest.get("data_version") == data_version and not counts["computed"]:
        return StageRun(Unchanged(manifest), previous.limit(0), counts, plan.kept, data_version)
    if counts["computed"] or previous is None:
        size_file_scans(plan.new.sparkSession, max(counts["computed"], plan.scanned_rows), rows_per_partition)
        computed = compute(repartition_for_work(plan.new, counts["computed"], rows_per_partition), counts)
    else:  # nothing new: the version is the reused rows (an empty frame of the stored columns)
        computed = previous.select(*stage.columns).limit(0)
    return StageRun(plan.output(computed), computed, counts, plan.kept, data_version)
