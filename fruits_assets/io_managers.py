"""Where assets live: one IO manager, under the run's assets URI (a folder, or s3://bucket/prefix).

Layout under the base, per asset:
    <asset>/_CURRENT.json          the commit point: which version is current, and its format
    <asset>/v-<time>-<run>/...     the data of one materialization
A materialization writes a new version, then replaces `_CURRENT.json` (an atomic rename locally,
an atomic PUT on S3), then deletes older versions. A run that fails part-way leaves the previous
materialization current and readable.

What is stored, by the type the asset returns:
- Spark DataFrame -> Parquet, written by Spark (local files, or EMRFS `s3://` on EMR);
- `PcaModel` -> `pca_model.npz` (plain arrays, read with numpy alone) + `spark_model/` (Spark ML);
- `dict` -> `value.json` (small results such as evaluation metrics);
- `CsvTable` -> one CSV file at a stable path `<asset>/<file_name>`, streamed from Spark;
  downstream assets load it as a pandas DataFrame.
"""


import io
import json
import os
import tempfile
import time
from dataclasses import dataclass

import dagster as dg
import pandas as pd
from dagster import ResourceDependency

from fruits_assets.errors import config_errors_fail_once, spark_filesystem_errors
from fruits_assets.pca import PcaModel
from fruits_assets.settings import FruitsSettings
from fruits_assets.spark import SparkResource
from fruits_assets.spark_jobs import write_csv
from fruits_assets.storage import Storage, join

MANIFEST = "_CURRENT.json"


@dataclass
class CsvTable:
    """A Spark DataFrame to store as one CSV file (streamed, never collected whole)."""

    frame: object  # pyspark.sql.DataFrame with columns path, label, split, pcs (array)
    k: int
    file_name: str


class NotMaterializedError(dg.DagsterError):
    pass


class FruitsIOManager(dg.ConfigurableIOManager):
    """Stores each asset as a committed version under `base_uri()`; see the module docstring."""

    settings: ResourceDependency[FruitsSettings]
    pyspark: ResourceDependency[SparkResource]

    def base_uri(self) -> str:
        return self.settings.assets_uri()

    def storage(self) -> Storage:
        return self.settings.storage()

    # -- paths --------------------------------------------------------------------------------
    def asset_uri(self, asset_key: dg.AssetKey) -> str:
        return join(self.base_uri(), *asset_key.path)

    def current(self, asset_key: dg.AssetKey) -> dict:
        """The manifest of the current materialization of `asset_key`."""
        uri = join(self.asset_uri(asset_key), MANIFEST)
        storage = self.storage()
        if not storage.exists(uri):
            raise NotMaterializedError(
                f"Asset {asset_key.to_user_string()!r} has no materialization at "
                f"{self.asset_uri(asset_key)}: materialize it first."
            )
        return json.loads(storage.read_bytes(uri))

    # -- writing ------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj) -> None:
        with config_errors_fail_once():
            self._handle_output(context, obj)

    def _handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        started = time.perf_counter()
        storage = self.storage()
        asset_dir = self.asset_uri(context.asset_key)
        version = f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{context.run_id[:8]}"
        location = join(asset_dir, version)
        if isinstance(obj, CsvTable):
            fmt, location = "csv", join(asset_dir, obj.file_name)
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, obj.file_name)
                rows = write_csv(obj.frame, obj.k, local)
                preview = csv_preview(local)
                storage.upload_file(local, location)
            context.add_output_metadata(
                {"csv_rows": rows, "csv_path": dg.MetadataValue.path(location), "preview": dg.MetadataValue.md(preview)}
            )
        elif isinstance(obj, PcaModel):
            fmt = "pca"
            storage.write_bytes(join(location, "pca_model.npz"), obj.to_npz_bytes())
            if obj.spark_model is not None:
                with spark_filesystem_errors(location):
                    obj.spark_model.write().overwrite().save(join(location, "spark_model"))
        elif isinstance(obj, dict):
            fmt = "json"
            storage.write_bytes(join(location, "value.json"), json.dumps(obj, indent=1).encode())
        elif _is_spark_frame(obj):
            fmt = "parquet"
            with spark_filesystem_errors(location):
                obj.write.mode("overwrite").parquet(location)
        else:
            raise dg.DagsterInvariantViolationError(
                f"{type(self).__name__} cannot store a {type(obj).__name__} "
                f"(asset {context.asset_key.to_user_string()})."
            )
        manifest = {"format": fmt, "location": location, "run_id": context.run_id, "version": version}
        if fmt == "pca":
            manifest["spark_model"] = obj.spark_model is not None
        storage.write_bytes(join(asset_dir, MANIFEST), json.dumps(manifest).encode())
        self._delete_old_versions(asset_dir, keep=version if fmt != "csv" else None)
        # Spark is lazy: for a DataFrame, this is when its rows are computed, so it is the time
        # (and, with the asset's row count, the throughput) of the whole stage.
        seconds = time.perf_counter() - started
        metadata = {"stored_at": dg.MetadataValue.path(location), "format": fmt, "write_seconds": round(seconds, 2)}
        rows = _metadata_number(context.output_metadata.get("rows"))
        if rows and seconds > 0:
            metadata["rows_per_second"] = round(rows / seconds, 1)
        context.add_output_metadata(metadata)

    def _delete_old_versions(self, asset_dir: str, keep: str | None) -> None:
        storage = self.storage()
        for name in storage.list_children(asset_dir):
            if name.startswith("v-") and name != keep:
                storage.delete_tree(join(asset_dir, name))

    # -- reading ------------------------------------------------------------------------------
    def _spark(self):
        return self.pyspark.spark_session

    def load_input(self, context: dg.InputContext):
        with config_errors_fail_once():
            manifest = self.current(context.asset_key)
            return self.load_manifest(manifest)

    def load_manifest(self, manifest: dict):
        fmt, location = manifest["format"], manifest["location"]
        if fmt == "parquet":
            with spark_filesystem_errors(location):
                return self._spark().read.parquet(location)
        if fmt == "pca":
            # The Spark model loads on first use only: a check that reads k on the Dagster host
            # must not need Spark (nor, on EMR, an S3 file system for Spark).
            spark_model = None
            if manifest.get("spark_model", True):  # a model stored without one loads without one

                def spark_model():
                    from pyspark.ml import PipelineModel

                    self._spark()  # PipelineModel.load needs an active session
                    with config_errors_fail_once(), spark_filesystem_errors(location):
                        return PipelineModel.load(join(location, "spark_model"))

            return PcaModel.from_npz_bytes(
                self.storage().read_bytes(join(location, "pca_model.npz")), spark_model=spark_model
            )
        if fmt == "csv":
            return pd.read_csv(io.BytesIO(self.storage().read_bytes(location)))
        if fmt == "json":
            return json.loads(self.storage().read_bytes(join(location, "value.json")))
        raise dg.DagsterInvariantViolationError(f"Unknown stored format {fmt!r} at {location}")


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


def _metadata_number(value):
    value = getattr(value, "value", value)  # a MetadataValue or a plain number
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _is_spark_frame(obj) -> bool:
    try:
        from pyspark.sql import DataFrame
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return False
    return isinstance(obj, DataFrame)
