"""Helpers shared by the tests: run configs, running the graph, loading what it stored, the
plain-Keras reference, and reading a run's results."""

import socket
from pathlib import Path

import dagster as dg
import numpy as np

from fruits_assets import assets, checks
from fruits_assets.featurize import load_model, resolve_weights
from fruits_assets.images import decode_image
from fruits_assets.io_managers import FruitsIOManager
from fruits_assets.resources import fruits_resources
from fruits_assets.settings import FruitsSettings
from fruits_assets.spark import SparkResource
from fruits_assets.storage import Storage

ALL_ASSETS = [*dg.load_assets_from_modules([assets]), *dg.load_asset_checks_from_modules([checks])]
TEST_MASTER = "local[2]"


def settings_config(**values) -> dict:
    """A run config that sets these settings (what `resources: settings: config:` does in the UI)."""
    return {"resources": {"settings": {"config": values}}}


def run_config(images_root, weights="random", image_size=96, raw_images: dict | None = None, **settings) -> dict:
    config = settings_config(
        images_root=str(images_root), model_weights=str(weights), image_size=image_size, **settings
    )
    if raw_images:
        config["ops"] = {"raw_images": {"config": raw_images}}
    return config


def with_output(config: dict, output_root) -> dict:
    """`config` plus the test's output folder and Spark master (local deployment)."""
    settings = {"deployment": "local", "output_root": str(output_root), "spark_master": TEST_MASTER}
    settings.update(config.get("resources", {}).get("settings", {}).get("config", {}))
    return {**config, "resources": {"settings": {"config": settings}}}


def materialize(output_root, config: dict, selection=None, raise_on_error=True, instance=None, assets=None):
    """The assets (default: all of them, and their checks) on local Spark, stored under
    `output_root`, with the code location's own resources."""
    return dg.materialize(
        assets or ALL_ASSETS,
        resources=fruits_resources(),
        run_config=with_output(config, output_root),
        selection=selection,
        raise_on_error=raise_on_error,
        instance=instance,
    )


def io_manager(output_root=None, **settings) -> FruitsIOManager:
    """The IO manager of a local deployment storing under `output_root` (or of `settings`)."""
    if output_root is not None:
        settings = {"deployment": "local", "output_root": str(output_root), "spark_master": TEST_MASTER, **settings}
    fruits_settings = FruitsSettings(**settings)
    return FruitsIOManager(fruits_settings, SparkResource(fruits_settings))


def load(output_root, asset_name: str):
    """The current stored value of an asset, through Dagster's own `Definitions.load_asset_value`
    on the code location's assets and resources (here, for a local root under `output_root`)."""
    settings = FruitsSettings(deployment="local", output_root=str(output_root), spark_master=TEST_MASTER)
    definitions = dg.Definitions(assets=ALL_ASSETS, resources=fruits_resources(settings))
    return definitions.load_asset_value(asset_name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plain_keras_features(paths, weights_spec: str, image_size: int) -> np.ndarray:
    """The reference: one process, no Spark, none of the product's featurization code; same
    decode, same weights, Keras' own `preprocess_input` and `model.predict`."""
    from keras.applications.mobilenet_v2 import preprocess_input

    weights = resolve_weights(weights_spec, image_size, Storage())
    model = load_model(weights, image_size)
    batch = np.stack([decode_image(Path(p).read_bytes(), image_size) for p in paths])
    return model.predict(preprocess_input(batch.astype(np.float32)), batch_size=16, verbose=0)


def check_results(result) -> dict:
    """{check name: (passed, severity, metadata)} of a run's asset-check evaluations."""
    out = {}
    for event in result.get_asset_check_evaluations():
        out[event.check_name] = (
            event.passed,
            event.severity.value,
            {k: v.value for k, v in event.metadata.items()},
        )
    return out


def metadata_of(result, asset_name: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset_name)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def latest_run_id(home: Path) -> str:
    """The newest run of the Dagster instance at `home` (a CLI's DAGSTER_HOME)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return instance.get_run_records(limit=1)[0].dagster_run.run_id


def latest_run_metadata(home: Path) -> dict:
    """{asset: metadata} of what the newest run of the Dagster instance at `home` materialized
    (its event log: what the run recorded, whatever its console showed)."""
    out = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = instance.get_run_records(limit=1)[0].dagster_run.run_id
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = entry.dagster_event.event_specific_data.materialization
            out[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    return out
