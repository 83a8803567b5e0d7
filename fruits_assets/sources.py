"""What the pipeline is made from, as Dagster sees it: observable source assets.

- `photos`: the files under the images root (their paths, sizes and modification times; S3:
  sizes and ETags; nothing is read), as many per class as FRUITS_LIMIT_PER_CLASS keeps;
- `input_size`: the model's input size (FRUITS_IMAGE_SIZE), which `preprocessed_images` resizes to;
- `model_weights`: the weights `image_features` converts (FRUITS_MODEL_WEIGHTS: the file's path
  and its size and modification time, or ETag; the name alone for `imagenet` and `random`);
- `pca_settings`: the variance target and the cap on k (FRUITS_PCA_VARIANCE, FRUITS_PCA_MAX_K).

Each has a data version; an asset made from an older one is *Unsynced* in the UI. They are
observed by `observe_sources` (the UI's "Observe sources", or the opt-in automation sensor every
5 minutes) with the settings of the environment, and by the steps themselves with the settings
of their run (`record_source`): a run configured otherwise in the launchpad is recorded as made
from what it used, so a later observation of the environment's settings tells whether it differs.
"""

from __future__ import annotations

import hashlib
import os

from fruits_assets.constants import SAMPLE_IMAGES
from fruits_assets.incremental import digest
from fruits_assets.listing import check_images_root, relative_parts
from fruits_assets.sample_data import SAMPLE_VERSION
from fruits_assets.storage import is_s3, split_s3

SOURCES = ("photos", "input_size", "model_weights", "pca_settings")
FEEDS = {  # source -> the asset made from it
    "photos": "raw_images",
    "input_size": "preprocessed_images",
    "model_weights": "image_features",
    "pca_settings": "pca_model",
}


def photos_version(versions: dict[str, str], root: str, limit_per_class: int) -> tuple[str, dict]:
    """The photos' data version from a listing ({path: size and modification time or ETag}) and,
    per top folder (split), its file count."""
    whole, counts = hashlib.sha256(), {}
    for path, marker in sorted(versions.items()):
        whole.update(f"{path}\0{marker}\n".encode())
        parts = relative_parts(root, path)
        split = parts[0] if len(parts) > 1 else "(root)"
        counts[split] = counts.get(split, 0) + 1
    return digest("photos", whole.hexdigest(), limit_per_class), dict(sorted(counts.items()))


def sample_photos_version(limit_per_class: int) -> str:
    """The generated sample's data version (always the same files)."""
    return digest("photos", SAMPLE_VERSION, limit_per_class)


def input_size_version(image_size: int) -> str:
    return digest("input_size", image_size)


def model_weights_version(spec: str, storage) -> str:
    """The weights' data version: what FRUITS_MODEL_WEIGHTS names, and that file's size and
    modification time (S3: ETag); nothing is read."""
    spec = spec.strip()
    if spec in ("imagenet", "random"):  # named weights: the same whatever the machine (featurize.named_weights)
        return digest("model_weights", spec)
    if is_s3(spec):
        bucket, key = split_s3(spec)
        head = storage.client.head_object(Bucket=bucket, Key=key)
        return digest("model_weights", spec, head["ContentLength"], head["ETag"])
    stat = os.stat(spec)
    return digest("model_weights", spec, stat.st_size, stat.st_mtime_ns)


def pca_settings_version(variance_target: float, max_k: int) -> str:
    return digest("pca_settings", float(variance_target), int(max_k))


def observed_versions(settings, storage) -> dict[str, tuple[str, dict]]:
    """{source: (data version, metadata)} of every source, with these settings."""
    root = settings.images_root.strip()
    if root == SAMPLE_IMAGES:
        photos = (sample_photos_version(settings.limit_per_class), {"images_root": "sample (generated)"})
    else:
        root = check_images_root(root, storage)
        version, counts = photos_version(dict(storage.list_versions(root)), root, settings.limit_per_class)
        metadata = {"images_root": root, "files": sum(counts.values()), "per_split": describe(counts)}
        photos = (version, {**metadata, "limit_per_class": settings.limit_per_class})
    return {
        "photos": photos,
        "input_size": (input_size_version(settings.image_size), {"image_size": settings.image_size}),
        "model_weights": (model_weights_version(settings.model_weights, storage), {"weights": settings.model_weights}),
        "pca_settings": (
            pca_settings_version(settings.pca_variance, settings.pca_max_k),
            {"variance_target": settings.pca_variance, "max_k": settings.pca_max_k},
        ),
    }


def describe(counts: dict) -> str:
    """'Test: 2,000 files; Training: 6,300 files'."""
    return "; ".join(f"{split}: {files:,} files" for split, files in counts.items())


def record_source(context, source: str, data_version: str, metadata: dict | None = None) -> None:
    """Record, from a step, the source version its run used (before its output: Dagster then
    counts it as what the output was made from). Not for an asset invoked as a function."""
    import dagster as dg
    from dagster._core.definitions.data_version import DATA_VERSION_TAG  # not exported by Dagster 1.13

    if not hasattr(context.resources, "io_manager"):
        return
    context.log_event(
        dg.AssetObservation(asset_key=source, tags={DATA_VERSION_TAG: data_version}, metadata=metadata or {})
    )
    # Dagster reads the input versions of a step when it starts: read again when the output is
    # recorded, so its provenance is this observation.
    step = getattr(getattr(context, "op_execution_context", context), "_step_execution_context", None)
    if step is not None:
        step.wipe_input_asset_version_info(dg.AssetKey(source))
