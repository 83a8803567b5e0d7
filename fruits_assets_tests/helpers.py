"""Helpers shared by the asset tests: running the graph and the plain-Keras reference."""

import dagster as dg
import numpy as np

from fruits_assets import assets, checks
from fruits_assets.featurize import load_model, resolve_weights
from fruits_assets.images import decode_image
from fruits_assets.resources import local_resources
from fruits_assets.storage import Storage

ALL_ASSETS = [*dg.load_assets_from_modules([assets]), *dg.load_asset_checks_from_modules([checks])]


def run_config(images_root, weights="random", image_size=96, **extra_ops) -> dict:
    ops = {
        "raw_images": {"config": {"images_root": str(images_root)}},
        "preprocessed_images": {"config": {"image_size": image_size}},
        "image_features": {"config": {"weights": str(weights)}},
    }
    for name, config in extra_ops.items():
        ops.setdefault(name, {"config": {}})["config"].update(config)
    return {"ops": ops}


def materialize(output_root, config: dict, selection=None, raise_on_error=True, instance=None):
    return dg.materialize(
        ALL_ASSETS,
        resources=local_resources(str(output_root), "local[2]"),
        run_config=config,
        selection=selection,
        raise_on_error=raise_on_error,
        instance=instance,
    )


def plain_keras_features(paths, weights_spec: str, image_size: int) -> np.ndarray:
    """The reference: one process, no Spark, none of the product's featurization code; same
    decode, same weights, Keras' own `preprocess_input` and `model.predict`."""
    from keras.applications.mobilenet_v2 import preprocess_input

    weights = resolve_weights(weights_spec, image_size, Storage())
    model = load_model(weights, image_size)
    batch = np.stack([decode_image(open(p, "rb").read(), image_size) for p in paths])
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
    [event] = [
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset_name)
    ]
    return {k: v.value for k, v in event.materialization.metadata.items()}
