"""The code location: assets, checks, the job and the resources (the same in every deployment)."""

import dagster as dg

from fruits_assets import assets, checks
from fruits_assets.resources import fruits_resources
from fruits_assets.sensors import images_root_sensor

all_assets = dg.load_assets_from_modules([assets])
all_checks = dg.load_asset_checks_from_modules([checks])

fruits_pipeline = dg.define_asset_job(
    "fruits_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every asset, from the raw images to the PCA CSV and its evaluation.",
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[fruits_pipeline],
    sensors=[images_root_sensor],
    resources=fruits_resources(),
    # One process for the run: one Spark session (and its warm Python workers, with their cached
    # model) serves every step, instead of a JVM and TensorFlow start per step.
    executor=dg.in_process_executor,
)
