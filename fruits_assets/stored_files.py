"""Parquet versions that include files of earlier versions: what an incremental stage stores,
and how a reader sees it (one place for both sides; `spark_jobs.reuse_plan` decides what to
include, the IO manager stores and reads it).

An incremental version of an asset is
- its own Parquet files (the rows it computed, or copied when it compacts), in its folder;
- `inherits`: whole Parquet files of earlier versions, `<version>/<file>` relative to the
  asset's folder, read as part of this version and never written again;
- `excludes`: rows of those inherited files that are no longer part of the asset (a deleted
  image, or an image whose bytes changed, whose new row is in the version's own files), as
  (`<version>/<file>`, path) pairs: a file that holds one outdated row is still inherited, and
  its other rows are not copied. A path identifies a row within one file (every version has one
  row per image), so an exclusion never hides a row of another file, e.g. the new row of an
  image whose bytes changed back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# (<version>/<file>, path) pairs joined by this character, which no path holds.
_SEP = "\u0000"


@dataclass
class Inheriting:
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
