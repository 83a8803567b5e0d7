"""Where assets live: one IO manager, under the run's assets URI (a folder, or s3://bucket/prefix).

It stores and versions; it does not know the domain types. Each output is written into a new
version folder (`versions.VersionStore`), staged, and published (made current) at once or, while
a blocking check of the asset runs in the same run, when that check passes (write, audit, publish:
`checks.publishing_check`). Inputs are read as
the run sees them: its own staged version, else the version current when the run started. A run
holds its root's writer lock from start to end (`versions.RunLock`): two runs at once never mix.

How a value is stored, by its type:
- a Spark DataFrame -> Parquet, written by Spark (local files, or EMRFS `s3://` on EMR); an
  `IncrementalFrame` (an incremental stage) -> its new rows as Parquet, plus the Parquet files
  of earlier versions it includes by reference (`inherits` in the manifest) but for their
  outdated rows (`excludes`); see `incremental.py`;
- a `dict` -> `value.json` (small results such as evaluation metrics);
- any object with `save(folder)` and `load(folder, manifest)` stores itself: `PcaModel`
  (pca.py), `CsvTable` (csv_table.py). The manifest records its class, to load it back.
"""

import importlib
import json
import time
from dataclasses import dataclass

import dagster as dg

from fruits_assets.errors import FruitsConfigError, config_errors_fail_once, spark_filesystem_errors
from fruits_assets.incremental import IncrementalFrame, StoredFrame, Unchanged, read_version
from fruits_assets.progress import SparkProgress
from fruits_assets.settings import FruitsSettings
from fruits_assets.spark import SparkResource
from fruits_assets.storage import Storage, join
from fruits_assets.versions import RunLock, VersionStore


@dataclass
class VersionFolder:
    """One version's folder, as a stored type's `save` and `load` see it."""

    uri: str
    storage: Storage
    spark: object  # a function returning the run's Spark session (started on first use)
    asset_uri: str

    def path(self, name: str) -> str:
        return join(self.uri, name)

    def published_path(self, name: str) -> str:
        """Where a file of this version is copied when the version is published."""
        return join(self.asset_uri, name)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.storage.write_bytes(self.path(name), data)

    def read_bytes(self, name: str) -> bytes:
        return self.storage.read_bytes(self.path(name))

    def upload(self, local_path: str, name: str) -> None:
        self.storage.upload_file(local_path, self.path(name))

    def save_spark(self, model, name: str) -> None:
        with spark_filesystem_errors(self.uri):
            model.write().overwrite().save(self.path(name))
        _saved_spark_models.remember(self.path(name), model)

    def load_spark(self, model_class, name: str):
        self.spark()  # Spark ML's loaders need an active session
        saved = _saved_spark_models.get(self.path(name))
        if saved is not None:
            return saved
        with config_errors_fail_once(), spark_filesystem_errors(self.uri):
            return model_class.load(self.path(name))


class _SavedSparkModels:
    """The Spark models this process saved last, by stored path: a step that reads a model an
    earlier step of the same run saved (pca_features_csv, after pca_model, in-process) skips
    Spark ML's loader (~2.5 s: a dozen small Spark jobs). Safe because a version's folder is
    written once and never changed; kept only while the Spark context that holds them runs."""

    KEEP = 4

    def __init__(self):
        self._models: dict[str, tuple] = {}

    def remember(self, path: str, model) -> None:
        from pyspark import SparkContext

        self._models.pop(path, None)
        self._models[path] = (model, SparkContext._active_spark_context)
        while len(self._models) > self.KEEP:
            self._models.pop(next(iter(self._models)))

    def get(self, path: str):
        from pyspark import SparkContext

        model, context = self._models.get(path, (None, None))
        return model if model is not None and context is SparkContext._active_spark_context else None


_saved_spark_models = _SavedSparkModels()


@dg.io_manager(required_resource_keys={"settings", "pyspark"})
def fruits_io_manager(context: dg.InitResourceContext):
    """The `io_manager` resource: a `FruitsIOManager` on the run's settings (the `settings`
    resource as this run configured it), holding the root's writer lock for the whole run."""
    manager = FruitsIOManager(context.resources.settings, context.resources.pyspark)
    manager.lock_for_run(context)
    try:
        yield manager
    finally:
        manager.release()


class FruitsIOManager(dg.IOManager):
    """Stores each asset as versions under the run's assets URI; see the module docstring.

    A plain IOManager built by `fruits_io_manager` from the run's `settings` resource, not a
    ConfigurableIOManager holding one: a resource nested in another keeps the values it was
    built with, so run config given to `settings` (the launchpad) would not reach it."""

    def __init__(self, settings: FruitsSettings, pyspark: SparkResource):
        self.settings, self.pyspark = settings, pyspark
        self._lock: RunLock | None = None

    def base_uri(self) -> str:
        return self.settings.assets_uri()

    def store(self) -> VersionStore:
        return VersionStore(self.base_uri(), self.settings.storage())

    # -- a run: the writer lock and the run's snapshot -----------------------------------------
    def lock_for_run(self, context: dg.InitResourceContext) -> None:
        run = context.dagster_run
        if run is None:  # built outside a run (a test, a notebook): reads only
            return
        try:
            wait = self.settings.resolved().lock_wait_seconds
        except FruitsConfigError:
            return  # every asset fails at once with the settings' own message
        store = self.store()
        lock = RunLock(store, run.run_id, log=context.log.info if context.log else print, wait_seconds=wait)
        lock.acquire()
        if lock.owner:
            store.snapshot(run.run_id)
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def publish(self, asset: str, run_id: str, because: str) -> dict:
        """Make this run's staged version of `asset` current (the root's lock must be ours)."""
        if self._lock is not None:
            self._lock.check()
        return self.store().publish(asset, run_id, because)

    # -- writing ------------------------------------------------------------------------------
    def handle_output(self, context: dg.OutputContext, obj) -> None:
        with config_errors_fail_once():
            self._handle_output(context, obj)

    def _handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        store, asset = self.store(), context.asset_key.to_user_string()
        if isinstance(obj, Unchanged):  # the current version stays: nothing to write or publish
            location = store.location(obj.manifest)
            context.add_output_metadata(
                {"stored_at": dg.MetadataValue.path(location), "publication": "current (unchanged)"}
            )
            return
        started = time.perf_counter()
        version, uri = store.new_version(asset, context.run_id)
        folder = VersionFolder(uri, store.storage, lambda: self.pyspark.spark_session, store.asset_dir(asset))
        manifest, metadata = self._save(obj, folder, context)
        recorded = {key: _metadata_value(context.output_metadata.get(key)) for key in MANIFEST_METADATA}
        store.stage(asset, context.run_id, {**manifest, **recorded, "version": version})
        audited_by = blocking_checks_in_run(context)
        if audited_by:
            publication = f"staged: becomes current when the blocking check {', '.join(audited_by)} passes"
        else:
            self.publish(asset, context.run_id, because="materialized (no blocking check)")
            publication = "current"
        # Spark is lazy: for a DataFrame, this is when its rows are computed, so it is the time
        # (and, with the asset's row count, the throughput) of the whole stage.
        seconds = time.perf_counter() - started
        metadata.update(
            {
                "stored_at": dg.MetadataValue.path(uri),
                "version": version,
                "publication": publication,
                "format": manifest["format"],
                "write_seconds": round(seconds, 2),
            }
        )
        rows = metadata.get("rows_written", _metadata_number(context.output_metadata.get("rows")))
        if rows and seconds > 0:
            metadata["rows_per_second"] = round(rows / seconds, 1)
        context.add_output_metadata(metadata)

    def _save(self, obj, folder: VersionFolder, context) -> tuple[dict, dict]:
        if hasattr(obj, "save") and hasattr(type(obj), "load"):
            extras, metadata = obj.save(folder)
            kind = type(obj)
            return {"format": "object", "type": f"{kind.__module__}:{kind.__qualname__}", **extras}, metadata
        if isinstance(obj, dict):
            folder.write_bytes("value.json", json.dumps(obj, indent=1).encode())
            return {"format": "json"}, {}
        if isinstance(obj, IncrementalFrame):
            # An incremental version: its own rows, and files of earlier versions (see incremental.py).
            written = self._write_parquet(obj.frame, folder, context, obj.rows_written)
            return {**written, "inherits": obj.inherited, "excludes": obj.excluded}, {
                "rows_written": obj.rows_written,
                "files_inherited": len(obj.inherited),
                "rows_excluded_from_inherited_files": len(obj.excluded),
            }
        if _is_spark_frame(obj):
            return self._write_parquet(obj, folder, context, _metadata_number(context.output_metadata.get("rows"))), {}
        raise dg.DagsterInvariantViolationError(
            f"{type(self).__name__} cannot store a {type(obj).__name__} (asset {context.asset_key.to_user_string()})."
        )

    def _write_parquet(self, frame, folder: VersionFolder, context, rows: int | None) -> dict:
        """Writes the frame; returns its manifest entries. The schema is stored with it, so a
        reader reads no file's footer to learn it (a Spark job, ~0.1-0.3 s, at every read)."""
        # Spark is lazy: the whole stage runs now, so this is where its progress is told.
        log = context.log.info if context.has_asset_key and context.step_context else print
        with (
            spark_filesystem_errors(folder.uri),
            SparkProgress(frame.sparkSession, log, context.asset_key.to_user_string(), rows),
        ):
            frame.write.mode("overwrite").parquet(folder.uri)
        return {"format": "parquet", "schema": frame.schema.jsonValue()}

    # -- reading ------------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext):
        """The version this run reads (outside a run, e.g. `Definitions.load_asset_value`: the
        current one). In a run a Parquet asset comes as a `StoredFrame`, read on first use."""
        with config_errors_fail_once():
            run_id = context.step_context.run_id if context._step_context is not None else None
            manifest = self.store().for_run(context.asset_key.to_user_string(), run_id)
            if run_id is not None and manifest["format"] == "parquet":
                return StoredFrame(manifest, lambda: self.load_manifest(manifest))
            return self.load_manifest(manifest)

    def current(self, asset_key: dg.AssetKey) -> dict:
        """The published manifest of an asset (what users and new runs read)."""
        return self.store().for_run(asset_key.to_user_string(), None)

    def load_manifest(self, manifest: dict):
        store = self.store()
        folder = VersionFolder(
            store.location(manifest),
            store.storage,
            lambda: self.pyspark.spark_session,
            store.asset_dir(manifest["asset"]),
        )
        fmt = manifest["format"]
        if fmt == "parquet":
            # An incremental version includes files of earlier versions (`inherits`), but for
            # their outdated rows (`excludes`).
            inherited = [join(folder.asset_uri, relative) for relative in manifest.get("inherits", [])]
            with spark_filesystem_errors(folder.uri):
                return read_version(
                    self.pyspark.spark_session,
                    folder.uri,
                    inherited,
                    manifest.get("excludes", []),
                    manifest.get("schema"),  # absent from versions stored before it was kept
                )
        if fmt == "json":
            return json.loads(folder.read_bytes("value.json"))
        if fmt == "object":
            module, _, name = manifest["type"].partition(":")
            return getattr(importlib.import_module(module), name).load(folder, manifest)
        raise dg.DagsterInvariantViolationError(f"Unknown stored format {fmt!r} at {folder.uri}")


def blocking_checks_in_run(context: dg.OutputContext) -> list[str]:
    """The blocking checks of the output's asset that this run executes (Dagster's own record of
    the checks: `checks.publishing_check` declares them): the asset's new version waits for them.
    None run (the asset materialized without its checks, or invoked outside a run): it is made
    current at once."""
    step = context.step_context if context.has_asset_key and context._step_context is not None else None
    if step is None:
        return []
    graph = step.job_def.asset_layer.asset_graph
    selected = step.dagster_run.asset_check_selection
    return sorted(
        key.name
        for key in graph.asset_check_keys
        if key.asset_key == context.asset_key and graph.get(key).blocking and (selected is None or key in selected)
    )


# Output metadata the manifest keeps: what later steps decide on without reading the data (its
# data version, what it was made from, the size of its arrays, raw_images' photos).
MANIFEST_METADATA = ("data_version", "signature", "image_size", "rows", "photos")


def _metadata_value(value):
    value = getattr(value, "value", value)  # a MetadataValue or a plain value
    return value if value not in ("", None) else None


def _metadata_number(value):
    value = getattr(value, "value", value)  # a MetadataValue or a plain number
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _is_spark_frame(obj) -> bool:
    try:
        from pyspark.sql import DataFrame
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return False
    return isinstance(obj, DataFrame)
