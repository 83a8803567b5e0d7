"""The code location: assets, checks, the job, the opt-in automation and the resources (the same in
every deployment)."""

import dagster as dg

from fruits_assets import assets, checks
from fruits_assets.resources import fruits_resources

all_assets = dg.load_assets_from_modules([assets])
all_checks = dg.load_asset_checks_from_modules([checks])

fruits_pipeline = dg.define_asset_job(
    "fruits_pipeline",
    selection=dg.AssetSelection.all(),
    description="Every asset, from the raw images to the PCA CSV and its evaluation.",
)

# Declarative automation, off until turned on (UI: Automation -> fruits_automation): the photos are
# observed every 5 minutes, and each asset is materialized once what it is made from has a new
# data version (assets.PHOTOS_OBSERVED, assets.EAGER). Runs with nothing new compute nothing.
fruits_automation = dg.AutomationConditionSensorDefinition(
    "fruits_automation",
    target=dg.AssetSelection.all(include_sources=True),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Observes the photos every 5 minutes and keeps every asset in sync with them (opt-in).",
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[fruits_pipeline],
    sensors=[fruits_automation],
    resources=fruits_resources(),
    # One process for the run: one Spark session (and its warm Python workers, with their cached
    # model) serves every step, instead of a JVM and TensorFlow start per step.
    executor=dg.in_process_executor,
)
