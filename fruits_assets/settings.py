"""Settings read from the environment, and their validation: the one place for each default.

Every user-facing knob has an environment variable (documented in README.md) that provides the
default of the matching Dagster config field, so the UI launchpad shows, and lets users edit, the
value a run will use.
"""

from __future__ import annotations

import os
from pathlib import Path

SUPPORTED_IMAGE_SIZES = (96, 128, 160, 192, 224)
DEPLOYMENTS = ("local", "emr")
DEFAULT_REGION = "eu-west-1"  # the start-up's GDPR choice: data stays in Ireland
FEATURE_DIM = 1280  # MobileNetV2 alpha=1.0, avg-pooled
TRAIN_SPLIT = "Training"  # Fruits-360's own name for the training folder


class FruitsConfigError(ValueError):
    """A configuration or input problem the user must fix; its message says how."""


def env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def deployment_name() -> str:
    name = env("FRUITS_DEPLOYMENT", "local").lower()
    if name not in DEPLOYMENTS:
        raise FruitsConfigError(
            f"FRUITS_DEPLOYMENT={name!r} is unknown: use one of {', '.join(DEPLOYMENTS)}."
        )
    return name


def default_output_root() -> str:
    """FRUITS_OUTPUT_ROOT, else $DAGSTER_HOME/fruits_output, else ./fruits_output."""
    if os.environ.get("FRUITS_OUTPUT_ROOT", "").strip():
        return os.environ["FRUITS_OUTPUT_ROOT"].strip()
    if os.environ.get("DAGSTER_HOME", "").strip():
        return str(Path(os.environ["DAGSTER_HOME"]) / "fruits_output")
    return str(Path.cwd() / "fruits_output")


SAMPLE_IMAGES_MARKER = "sample"


def default_images_root() -> str:
    """FRUITS_IMAGES_ROOT, else the word ``sample``: the generated synthetic sample."""
    return env("FRUITS_IMAGES_ROOT", SAMPLE_IMAGES_MARKER)


def default_weights() -> str:
    return env("FRUITS_MODEL_WEIGHTS", "imagenet")


def default_image_size() -> int:
    raw = env("FRUITS_IMAGE_SIZE", "224")
    try:
        return int(raw)
    except ValueError:
        raise FruitsConfigError(
            f"FRUITS_IMAGE_SIZE={raw!r} is not a number: use one of {SUPPORTED_IMAGE_SIZES}."
        ) from None


def default_float(name: str, default: float) -> float:
    raw = env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise FruitsConfigError(f"{name}={raw!r} is not a number.") from None


def default_int(name: str, default: int) -> int:
    raw = env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise FruitsConfigError(f"{name}={raw!r} is not a whole number.") from None


def validate_image_size(size: int) -> int:
    if size not in SUPPORTED_IMAGE_SIZES:
        raise FruitsConfigError(
            f"Image size {size} is not supported by MobileNetV2's pretrained weights: "
            f"use one of {SUPPORTED_IMAGE_SIZES} (FRUITS_IMAGE_SIZE or the asset config)."
        )
    return size


def validate_pca_settings(variance_target: float, max_k: int) -> None:
    if not 0.0 < variance_target <= 1.0:
        raise FruitsConfigError(
            f"PCA variance target {variance_target} is outside (0, 1]: e.g. 0.95 keeps 95% of the "
            "variance (FRUITS_PCA_VARIANCE or the pca_model config)."
        )
    if max_k < 1:
        raise FruitsConfigError(
            f"PCA max k {max_k} is below 1 (FRUITS_PCA_MAX_K or the pca_model config)."
        )


def validate_region(region: str, allow_other_region: bool = False) -> str:
    """GDPR guard: refuse any region but eu-west-1 unless explicitly overridden."""
    if region != DEFAULT_REGION and not allow_other_region:
        raise FruitsConfigError(
            f"Region {region!r} refused: Fruits! keeps its data in {DEFAULT_REGION} (GDPR). "
            "Set FRUITS_ALLOW_NON_EU_REGION=1 only if the data-protection officer agreed."
        )
    return region


def allow_other_region() -> bool:
    return env("FRUITS_ALLOW_NON_EU_REGION", "0").lower() in ("1", "true", "yes")
