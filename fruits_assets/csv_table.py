"""The PCA CSV: a Spark DataFrame stored as one CSV file, written by Spark in parts, never collected.

It knows its own format (`save`/`load`, used by the IO manager): the file is written in the
version's folder, and publishing the version copies it to the stable path users open,
`<asset>/<file_name>` (e.g. fruits_output/pca_features_csv/pca_features.csv).

How it is written (`write_csv`): Spark sorts the rows by split, label and path into ranges (a
range partitioning: each partition a contiguous run of keys, in order), its Python workers format
each range's rows as CSV lines with Python's `csv` module, and Spark writes each range as one part
file into a folder next to the file. The driver then joins the header and the parts, in order,
into the one file (`Storage.concatenate`: a file copy locally, a multipart upload copying the
parts server-side on S3) and deletes the parts. No task and no process holds every row.

Why: before, the rows came to the driver as one stream, `repartition(1)` then `toLocalIterator`.
That sorts every row in one task, and PySpark's `toLocalIterator` fetches each partition whole as
one task result, so the one partition - every row - was held in one JVM heap at once. Measured
(`benchmarks/csv_at_scale.py`, benchmarks/README.md "CSV at Fruits-360's size"; each writer in a
fresh local Spark process, 2 cores): at Fruits-360's size, 90,000 rows x 300 components (a 318 MB
file), with a 1 GiB heap the earlier writer ran out of heap in the one task in every run, this
one passed with a JVM of 0.8-1.1 GB RSS (the earlier one's reached 2.1-3.5 GB with 4 GiB), the
same bytes. Time on 2 cores: the same within the noise once warm (16-19 s vs 19-22 s), a few
seconds more in a fresh process (the Python workers start) and at small sizes (+1.3-2.2 s at
6,000 x 40: more Spark jobs).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass

import pandas as pd

from fruits_assets.errors import is_missing_filesystem
from fruits_assets.python_workers import on_worker
from fruits_assets.storage import Storage, is_s3


@dataclass
class CsvTable:
    frame: object  # pyspark.sql.DataFrame with columns path, label, split, pcs (array)
    k: int
    file_name: str

    def save(self, folder) -> tuple[dict, dict]:
        """Write into the version folder `folder` (`write_csv`; its parts in a folder next to the
        file, deleted once joined); (manifest extras, metadata). The preview is read from the
        file's first MiB."""
        target = folder.path(self.file_name)
        rows = write_csv(self.frame, self.k, target, folder.storage)
        preview = csv_preview(folder.storage.read_range(target, 0, PREVIEW_BYTES))
        import dagster as dg

        return (
            {"file_name": self.file_name, "published_copies": [self.file_name]},
            {
                "csv_rows": rows,
                "csv_path": dg.MetadataValue.path(folder.published_path(self.file_name)),
                "preview": dg.MetadataValue.md(preview),
            },
        )

    @staticmethod
    def load(folder, manifest: dict) -> pd.DataFrame:
        """Downstream assets get the CSV as a pandas DataFrame."""
        return pd.read_csv(io.BytesIO(folder.read_bytes(manifest["file_name"])))


ORDER = ("split", "label", "path")
# Changing the file's columns, order or number format changes this (pca_features_csv's code version).
CSV_VERSION = "path-label-split-pcs-9g-v1"

# About this much CSV text per part (one range of the sort, one task). Parts of at least 5 MiB are
# copied by S3 itself when joined (smaller ones pass through the driver, 5 MiB at a time).
PART_BYTES = 64 * 1024 * 1024
# Estimated CSV text of a row: its path, label and split, and per component (".9g", a comma).
ROW_BYTES, COMPONENT_BYTES = 120, 15
PREVIEW_BYTES = 1024 * 1024


def write_csv(frame, k: int, target: str, storage: Storage | None = None, partitions: int | None = None) -> int:
    """Write the rows of `frame` (path, label, split, pcs), ordered by split, label and path, as
    one CSV file `target` (a local path or s3:// URI); return the row count.

    The file is what Python's `csv.writer` makes of the rows (UTF-8, its quoting, "\\r\\n" line
    ends) and the components as `format(v, ".9g")`: the same bytes the earlier single-stream
    writer wrote. Non-finite components stay 'nan', 'inf' and '-inf', as before: `load`
    (pandas) reads them back as NaN and +-inf, and the vectors check upstream keeps non-finite
    features out, so only an overflow could make one. `partitions`: the number of
    ranges (parts), by default about one per PART_BYTES of text and at least one per core.
    Where Spark cannot write s3:// (pyspark from PyPI has no S3 connector), the parts and the
    file are written in a local temporary folder, and the file uploaded.
    """
    from pyspark import StorageLevel

    storage = storage or Storage()
    # Computed once, kept on the executors' local disks: Spark samples the keys to place the
    # ranges' bounds, a pass over the rows before the sort's own. Projected 90,000 x 300, 1 GiB,
    # one session: 173 s computing the projection twice, 124 s persisted (benchmarks/README.md).
    cached_already = frame.storageLevel != StorageLevel.NONE  # then the caller's to release
    rows_on_disk = frame if cached_already else frame.persist(StorageLevel.DISK_ONLY)
    try:
        rows = rows_on_disk.count()
        if partitions is None:
            partitions = partitions_for(rows, k, frame.sparkSession.sparkContext.defaultParallelism)
        folder, name = _split(target)
        parts = _join(folder, f"_{name}.parts")
        try:
            write_parts(rows_on_disk, parts, partitions)
        except Exception as error:
            if not (is_s3(target) and is_missing_filesystem(error)):
                raise
            with tempfile.TemporaryDirectory(prefix="fruits-csv-") as tmp:
                local = os.path.join(tmp, name)
                write_parts(rows_on_disk, os.path.join(tmp, "parts"), partitions)
                join_parts(Storage(), os.path.join(tmp, "parts"), local, k)
                storage.upload_file(local, target)
            return rows
        join_parts(storage, parts, target, k)
        return rows
    finally:
        if not cached_already:
            rows_on_disk.unpersist()


def partitions_for(rows: int, k: int, cores: int) -> int:
    """Ranges to sort the rows into: about one per PART_BYTES of CSV text, at least one per core
    (each formats its own rows), at most one per row."""
    by_size = math.ceil(rows * (ROW_BYTES + COMPONENT_BYTES * k) / PART_BYTES)
    return max(1, min(rows, max(cores, by_size)))


def write_parts(frame, parts: str, partitions: int) -> None:
    """The CSV lines of `frame`'s rows (no header), sorted, written by Spark into the folder
    `parts`: part i holds the i-th range of keys. `repartitionByRange` with a number, not
    `orderBy`: adaptive execution keeps the number (it would coalesce an `orderBy`'s small
    ranges, at the tests' scale into one), and files are not split by row count
    (`maxRecordsPerFile`), so a part is one range."""
    lines = frame.repartitionByRange(partitions, *ORDER).sortWithinPartitions(*ORDER)
    (
        lines.select("path", "label", "split", "pcs")
        .mapInPandas(csv_lines, "value string")
        .write.mode("overwrite")
        .option("lineSep", "\r\n")
        .option("maxRecordsPerFile", 0)
        .text(parts)
    )


def join_parts(storage: Storage, parts: str, target: str, k: int) -> int:
    """The header and the part files of folder `parts`, in order, as the one file `target`; then
    the parts are deleted. Returns the file's size."""
    try:
        ordered = sorted(
            (_part_order(name), _join(parts, name), size)
            for name, size in storage.file_sizes(parts)
            if _part_order(name) is not None and size > 0
        )
        return storage.concatenate(target, [(uri, size) for _, uri, size in ordered], header(k))
    finally:
        storage.delete_tree(parts)
        if is_s3(parts):
            storage.delete(parts + "_$folder$")  # a folder marker EMRFS may leave


def header(k: int) -> bytes:
    return _csv_line(["path", "label", "split", *[f"pc_{i}" for i in range(1, k + 1)]]).encode("utf-8")


class _Lines(list):
    """What `csv.writer` writes to: one string per row, its line end included."""

    write = list.append


def _csv_line(values: list) -> str:
    out = _Lines()
    csv.writer(out).writerow(values)
    return out[0]


@on_worker
def csv_lines(batches):
    """Runs in Spark's Python workers: each row as its CSV line, without the line end (the text
    writer adds "\\r\\n", as `csv.writer` does). The csv module quotes the three text fields; a
    number never needs quoting (digits, '.', '-', 'e', '+', 'nan', 'inf'), so the numbers are
    joined directly: the same line, ~20% sooner than the csv module on the whole row."""
    for batch in batches:
        keys = _Lines()
        writer = csv.writer(keys)
        for path, label, split in zip(batch["path"], batch["label"], batch["split"], strict=True):
            writer.writerow([path, label, split])
        lines = [
            ",".join([key[:-2], *[format(v, ".9g") for v in pcs.tolist()]])
            for key, pcs in zip(keys, batch["pcs"], strict=True)
        ]
        yield pd.DataFrame({"value": lines})


_PART = re.compile(r"part-(\d+)-(?:.*-c(\d+))?")


def _part_order(name: str) -> tuple[int, int] | None:
    """part-<partition>-<job>-c<file>.txt -> (partition, file); None for Spark's other files."""
    match = _PART.match(name)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def _split(uri: str) -> tuple[str, str]:
    if is_s3(uri):
        folder, _, name = uri.rpartition("/")
        return folder, name
    return os.path.split(os.path.abspath(uri))


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_s3(folder) else os.path.join(folder, name)


def csv_preview(head: bytes, rows: int = 5, columns: int = 6) -> str:
    """The first rows and columns of a CSV, from its first bytes, as a markdown table."""
    text = head.decode("utf-8", errors="ignore")
    if len(head) >= PREVIEW_BYTES:  # cut: keep whole lines
        text = text[: text.rfind("\n") + 1]
    consumed: list[str] = []

    def lines():
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = csv.reader(lines())
    for _ in range(rows + 1):  # the header and `rows` records (a record may span lines)
        if next(reader, None) is None:
            break
    table = pd.read_csv(io.StringIO("".join(consumed)))
    shown = table.iloc[:, :columns]
    header_cells = list(shown.columns) + (["…"] if table.shape[1] > columns else [])
    out = ["| " + " | ".join(header_cells) + " |", "|" + "---|" * len(header_cells)]
    for values in shown.itertuples(index=False):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        out.append("| " + " | ".join(cells + (["…"] if len(header_cells) > len(cells) else [])) + " |")
    return "\n".join(out)
