"""The PCA CSV: a Spark DataFrame stored as one CSV file, streamed, never collected whole.

It knows its own format (`save`/`load`, used by the IO manager): the file is written in the
version's folder, and publishing the version copies it to the stable path users open,
`<asset>/<file_name>` (e.g. fruits_output/pca_features_csv/pca_features.csv).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass

import pandas as pd


@dataclass
class CsvTable:
    frame: object  # pyspark.sql.DataFrame with columns path, label, split, pcs (array)
    k: int
    file_name: str

    def save(self, folder) -> tuple[dict, dict]:
        """Write into the version folder `folder`; (manifest extras, metadata)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, self.file_name)
            rows = write_csv(self.frame, self.k, local)
            preview = csv_preview(local)
            folder.upload(local, self.file_name)
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


def write_csv(projected, k: int, local_file: str) -> int:
    """Stream the projected rows, ordered by split, label and path, into one CSV; return the row
    count. Nothing is collected whole: the rows come to the driver as one stream.

    They are sorted in one partition (Spark's external sort, which spills to disk when it must),
    not by a global sort: a global sort first samples its input for the ranges, which computes
    the projection twice (or caches it), and its ordered partitions would come to the driver
    one after another anyway, as this single stream does. Measured at 6,600 images of 224 px,
    the same Spark session, warm: 2.3-2.5 s vs 3.0-3.4 s for the cached global sort, same file.
    """
    rows = 0
    with open(local_file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", *[f"pc_{i}" for i in range(1, k + 1)]])
        for row in projected.repartition(1).sortWithinPartitions(*ORDER).toLocalIterator():
            writer.writerow([row.path, row.label, row.split, *(format(v, ".9g") for v in row.pcs)])
            rows += 1
    return rows


def csv_preview(local_file: str, rows: int = 5, columns: int = 6) -> str:
    """The first rows and columns of a CSV as a markdown table."""
    table = pd.read_csv(local_file, nrows=rows)
    shown = table.iloc[:, :columns]
    header = list(shown.columns) + (["…"] if table.shape[1] > columns else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for values in shown.itertuples(index=False):
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in values]
        lines.append("| " + " | ".join(cells + (["…"] if len(header) > len(cells) else [])) + " |")
    return "\n".join(lines)
