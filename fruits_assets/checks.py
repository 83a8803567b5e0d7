"""Asset checks: counts that reconcile, sane vectors, PCA on target, a CSV that matches.

Blocking (severity ERROR) where a downstream result would be garbage; warnings where a person
should look but the output is still usable. Each check reads the stored assets as the run sees
them (the run's own new versions), so it verifies what was written, not what the step meant to
write.

Write-audit-publish is declared here, once: `publishing_check` makes a blocking check that is the
audit of its asset. While such a check is selected in a run, the IO manager stages the asset's new
version instead of making it current (it asks Dagster for the asset's blocking checks:
`io_managers.blocking_checks_in_run`); when the check passes, `publish_if_passed` makes the version
current; when it fails, the previous version stays current. Every blocking check is made by
`publishing_check` (a test holds every check to it).

A version never changes, so a check's result on it is kept in its manifest (`checked`): a run in
which the version was not made anew (nothing new: the asset step found it unchanged) reuses the
result, and neither starts Spark nor reads Parquet to say again what it said.
"""

from collections.abc import Callable

import dagster as dg

from fruits_assets.assets import (
    image_features,
    pca_features_csv,
    pca_model,
    preprocessed_images,
    raw_images,
)
from fruits_assets.constants import FEATURE_DIM, TRAIN_SPLIT

# Checks read Spark outputs: on EMR they run on the cluster too (the step launcher).
SPARK_CHECK_RESOURCES = {"pyspark", "pyspark_step_launcher", "io_manager"}
# Changing what a check computes changes this, so results kept in manifests are computed again.
CHECKS_VERSION = "checks-v1"


def checked(context, compute: Callable[[], tuple[bool, dict]]) -> tuple[bool, dict]:
    """(passed, metadata) of this check on the version of its asset that this run reads:
    computed, or, when that version was not made in this run and this check already ran on it,
    the result kept in its manifest. A computed result is kept there."""
    [spec] = context.check_specs
    asset, check, run_id = spec.asset_key.to_user_string(), spec.name, context.run.run_id
    store = context.resources.io_manager.store()
    staged = store.staged(asset, run_id)
    manifest = staged or store.for_run(asset, run_id)
    kept = (manifest.get("checks") or {}).get(check)
    if staged is None and kept and kept.get("code") == CHECKS_VERSION:
        return kept["passed"], {**kept["metadata"], "result": f"kept from version {manifest['version']} (unchanged)"}
    passed, metadata = compute()
    record = {"passed": passed, "metadata": metadata, "code": CHECKS_VERSION}
    store.record_check(asset, run_id, manifest["version"], check, record)
    return passed, metadata


# The metadata mark of a check made by `publishing_check` (a test finds every blocking check has it).
PUBLISHES = "fruits/publishes_when_passed"


def publishing_check(asset, name: str, description: str, *others: str):
    """A blocking Spark check that is the audit of `asset`: when it passes, this run's new
    version of `asset` becomes current (`publish_if_passed`). `others`: the upstream assets it
    compares with."""
    return dg.asset_check(
        asset=asset,
        name=name,
        description=description,
        blocking=True,
        additional_ins={other: dg.AssetIn() for other in others},
        required_resource_keys=SPARK_CHECK_RESOURCES,
        metadata={PUBLISHES: True},
    )


def publish_if_passed(context, compute: Callable[[], tuple[bool, dict]]) -> dg.AssetCheckResult:
    """The result of a `publishing_check` (`compute`: (passed, metadata), see `checked`); when it
    passed, this run's staged version of the check's asset becomes current. The metadata says
    which version is current, and why."""
    passed, metadata = checked(context, compute)
    [spec] = context.check_specs
    check, asset = spec.name, spec.asset_key.to_user_string()
    io_manager = context.resources.io_manager
    store = io_manager.store()
    staged = store.staged(asset, context.run.run_id)
    if staged is None:
        pass  # the check ran alone, on a version of an earlier run: nothing to publish
    elif passed:
        io_manager.publish(asset, context.run.run_id, because=f"{check} passed")
        metadata[f"{asset} current version"] = f"{staged['version']} (published: {check} passed)"
    else:
        current = store.current(asset)
        metadata[f"{asset} current version"] = (
            f"{current['version'] if current else 'none'} (kept: {staged['version']} failed {check}, not published)"
        )
    return dg.AssetCheckResult(passed=passed, metadata=metadata)


def reconcile(listed: int, preprocessed: int, rejected: int) -> bool:
    return listed == preprocessed + rejected


@publishing_check(
    preprocessed_images,
    "counts_reconcile",
    "Files listed = images preprocessed + files rejected (quarantined in raw_images): nothing disappears.",
    "raw_images",
)
def counts_reconcile(context, preprocessed_images, raw_images) -> dg.AssetCheckResult:
    def compute():
        listed, valid = raw_images.count(), preprocessed_images.count()
        rejected = raw_images.where("reason IS NOT NULL").count()
        return reconcile(listed, valid, rejected), {"listed": listed, "preprocessed": valid, "rejected": rejected}

    return publish_if_passed(context, compute)


def bad_vector():
    """A Column, true for a `features` array that is not FEATURE_DIM finite numbers: missing,
    short, with a null, NaN or infinite value (Spark orders NaN above every number, so the max
    is NaN when any value is). A null value is bad too: `exists` over the values, used before,
    gave null for it, which the check's sum did not count."""
    from pyspark.sql import functions as F

    largest, smallest = F.array_max("features"), F.array_min("features")
    return F.coalesce(
        (F.size(F.array_compact("features")) != FEATURE_DIM)
        | F.isnan(largest)
        | (largest == float("inf"))
        | (smallest == float("-inf")),
        F.lit(True),
    )


@publishing_check(
    image_features,
    "vectors_complete_and_finite",
    "One feature row per preprocessed image; every vector has 1280 finite values.",
    "preprocessed_images",
)
def vectors_complete_and_finite(context, image_features, preprocessed_images) -> dg.AssetCheckResult:
    from pyspark.sql import functions as F

    def compute():
        features = image_features.select("features")  # read first: Columns need a session (a new EMR step has none)
        bad = F.sum(bad_vector().cast("int")).alias("bad")
        counts = features.agg(F.count(F.lit(1)).alias("rows"), bad).first()
        rows, bad, images = counts["rows"], counts["bad"] or 0, preprocessed_images.count()
        return rows == images and bad == 0, {"feature_rows": rows, "preprocessed_images": images, "bad_vectors": bad}

    return publish_if_passed(context, compute)


@dg.asset_check(
    asset=pca_model,
    name="variance_target_reached",
    description="k components reach the variance target (a warning if max_k capped k).",
)
def variance_target_reached(pca_model) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not pca_model.capped,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "k": pca_model.k,
            "max_k": pca_model.max_k,
            "cumulative_explained_variance": round(pca_model.cumulative_variance, 4),
            "variance_target": pca_model.variance_target,
        },
    )


@publishing_check(
    pca_features_csv,
    "csv_matches_features",
    "The CSV has one row per feature row, header path,label,split,pc_1..pc_k.",
    "image_features",
    "pca_model",
)
def csv_matches_features(context, pca_features_csv, image_features, pca_model) -> dg.AssetCheckResult:
    def compute():
        expected_header = ["path", "label", "split", *[f"pc_{i}" for i in range(1, pca_model.k + 1)]]
        rows, features = len(pca_features_csv), image_features.count()
        header_ok = list(pca_features_csv.columns) == expected_header
        metadata = {"csv_rows": rows, "feature_rows": features, "header_ok": header_ok, "k": pca_model.k}
        return header_ok and rows == features, metadata

    return publish_if_passed(context, compute)


@dg.asset_check(
    asset=raw_images,
    name="training_covers_test_labels",
    description="Every class in the Test split also has Training images (a warning otherwise).",
    required_resource_keys=SPARK_CHECK_RESOURCES,
)
def training_covers_test_labels(context, raw_images) -> dg.AssetCheckResult:
    from pyspark.sql import functions as F

    def compute():
        labels = (
            raw_images.where(F.col("reason").isNull())
            .groupBy("split")
            .agg(F.collect_set("label").alias("labels"))
            .collect()  # one row per split: a few class names
        )
        by_split = {r["split"]: set(r["labels"]) for r in labels}
        missing = sorted(by_split.get("Test", set()) - by_split.get(TRAIN_SPLIT, set()))
        return not missing, {"test_labels_missing_from_training": ", ".join(missing) or "none"}

    passed, metadata = checked(context, compute)
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.WARN, metadata=metadata)
