"""The asset graph: thin assets over the plain functions of the other modules.

raw_images -> preprocessed_images -> image_features -> pca_model -> pca_features_csv -> pca_quality
           -> rejected_images
"""

import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import numpy as np
from pydantic import Field

from fruits_assets.constants import FEATURE_DIM, TRAIN_SPLIT
from fruits_assets.csv_table import CsvTable
from fruits_assets.errors import FruitsConfigError, clear_errors
from fruits_assets.featurize import FEATURE_COLUMNS, feature_model, featurize_frame, model_key, resolve_weights
from fruits_assets.images import MAX_PIXELS
from fruits_assets.listing import images_root, list_images
from fruits_assets.pca import PcaModel, fit_pca, linear_algebra
from fruits_assets.plots import (
    class_thumbnails,
    confusion_plot,
    markdown_image,
    markdown_table,
    scatter_plot,
    scree_plot,
)
from fruits_assets.quality import evaluate
from fruits_assets.settings import FruitsSettings, validate_image_size
from fruits_assets.spark import PARQUET_CODEC
from fruits_assets.spark_jobs import (
    PREPROCESSED_COLUMNS,
    RAW_COLUMNS,
    RAW_REUSABLE,
    as_vectors,
    listing_frame,
    preprocess_frame,
    project_frame,
    raw_images_frame,
    reuse_plan,
    split_for_work,
)
from fruits_assets.storage import join
from fruits_assets.versions import PUBLISHED_BY_CHECK

GROUP = "fruits"
# Steps that talk to S3 or EMR retry transient faults (throttling, a dropped connection, a lost
# Spot node) with backoff; a configuration error (dg.Failure with allow_retries=False) is not
# retried.
S3_RETRY = dg.RetryPolicy(max_retries=2, delay=5.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
# Every Spark asset: on EMR, the step launcher runs it on the cluster. (The IO manager of its
# outputs is in context.resources too: Dagster gives a step the resources of its outputs.)
SPARK_RESOURCES = {"settings", "pyspark", "pyspark_step_launcher"}


def spark_asset(kinds: set[str], **kwargs):
    """The decorator of an asset computed with Spark (one place for what they share)."""

    def decorate(fn):
        return dg.asset(
            group_name=GROUP,
            kinds=kinds,
            required_resource_keys=SPARK_RESOURCES,
            code_version="1",
            retry_policy=S3_RETRY,
            **kwargs,
        )(clear_errors(fn))

    return decorate


def settings_of(context) -> FruitsSettings:
    """The run's settings (resolved when the run started)."""
    return context.resources.settings.resolved()


def previous_version(context, asset: str, *columns: str):
    """The asset's version that was current when this run started, if it has these columns
    (a version written before them cannot be reused): what an incremental asset starts from."""
    io_manager = getattr(context.resources, "io_manager", None)
    if not hasattr(io_manager, "started_with"):  # invoked directly (a test): nothing to reuse
        return None
    previous = io_manager.started_with(asset, context.run.run_id)
    if previous is None or not set(columns) <= set(previous.columns):
        return None
    return previous


def spark_for(context: dg.AssetExecutionContext, name: str):
    """The Spark session, with jobs labelled by asset in the Spark UI."""
    spark = context.resources.pyspark.spark_session
    spark.sparkContext.setJobDescription(f"fruits: {name}")
    return spark


# -- raw_images ---------------------------------------------------------------------------------
class RawImagesConfig(dg.Config):
    splits: list[str] = Field(
        default=[],
        description="Only these top folders (e.g. ['Test']); empty = every split. Rows of other "
        "splits are not listed, so downstream assets only see these.",
    )


@spark_asset(kinds={"spark", "python"})
def raw_images(context: dg.AssetExecutionContext, config: RawImagesConfig):
    """Every file under the images root: path, split, class label and bytes."""
    started = time.perf_counter()
    settings = settings_of(context)
    storage = context.resources.settings.storage()
    root = images_root(settings.images_root, settings.assets_uri(), storage)
    with ThreadPoolExecutor(2, thread_name_prefix="raw_images") as background:
        # The JVM starts (~5 s) while the driver lists and hashes the files.
        starting = background.submit(lambda: context.resources.pyspark.spark_session)
        listed, skipped = list_images(storage, root, settings.limit_per_class, config.splits)
        images = [f for f in listed if f.reason is None]
        if not images:
            raise FruitsConfigError(
                f"No image file found under {root!r} in the layout <split>/<Class Name>/<file>.jpg "
                f"({len(listed)} other files found)."
            )
        # Drawn while Spark's jobs run (the driver only waits for them).
        thumbnails = background.submit(class_thumbnails, images, storage)
        starting.result()
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        spark = spark_for(context, "raw_images")
        listing = listing_frame(spark, listed)
        # Incremental: a file whose path and identity (size and content hash; S3: size and ETag) are
        # unchanged keeps its row, bytes and verdict; only new or changed files are read and checked.
        previous = previous_version(context, "raw_images", "identity")
        keys = ["path", "identity"]
        plan = reuse_plan(previous, F.expr(RAW_REUSABLE), listing, keys, RAW_COLUMNS, carried=("stage", "size"))
        counts = plan.counts
        # Cached (the files' bytes, not images): the counts below and the IO manager's write read
        # each file once, not twice.
        frame = raw_images_frame(
            spark, plan.new, counts["computed"], root, storage, settings.rows_per_partition, counts["reused"] == 0
        ).persist(StorageLevel.MEMORY_AND_DISK)
        stats = F.count(F.lit(1)).alias("files"), F.sum("size").alias("bytes")
        rows = frame.groupBy("stage", "checked").agg(*stats).collect()
        if plan.kept is not None:  # the reused rows' verdicts, from the planning
            for stage, group in plan.kept.groupby(plan.kept["stage"].fillna(""), sort=False):
                rows.append(
                    {
                        "stage": stage or None,
                        "checked": False,
                        "files": len(group),
                        "bytes": int(group["size"].fillna(0).sum()),
                    }
                )
        by_stage: dict = {}
        for row in rows:
            by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + row["files"]
        counts_by_class: dict[tuple, int] = {}
        for f in images:
            counts_by_class[(f.split, f.label)] = counts_by_class.get((f.split, f.label), 0) + 1
        splits = sorted({s for s, _ in counts_by_class})
        labels = sorted({label for _, label in counts_by_class})
        table = [[label, *[counts_by_class.get((s, label), 0) for s in splits]] for label in labels]
        table.append(
            ["**total**", *[sum(c for (s, _), c in counts_by_class.items() if s == split) for split in splits]]
        )
        usable = by_stage.get(None, 0)
        decoded = sum(r["files"] for r in rows if r["checked"])
        seconds = round(time.perf_counter() - started, 2)
        context.log.info(f"raw_images: {len(listed)} files under {root} ({usable} usable images) in {seconds}s")
        yield dg.Output(
            plan.output(frame),
            metadata={
                "images_root": root,
                "rows": len(listed),
                **counts,
                "reused_by_reference": counts["reused"] - plan.copied_rows,
                "images": usable,
                "rejected_at_listing": len(listed) - len(images),
                "unreadable": by_stage.get("read", 0),
                "undecodable": by_stage.get("decode", 0),
                "decoded_to_check": decoded,
                "checks_reused": sum(r["files"] for r in rows if not r["checked"] and r["stage"] in (None, "decode")),
                "skipped_by_limit": skipped,
                "total_bytes": sum(r["bytes"] or 0 for r in rows),
                "classes": len(labels),
                "images_per_class": dg.MetadataValue.md(markdown_table(["class", *splits], table)),
                "thumbnails": dg.MetadataValue.md(markdown_image(thumbnails.result(), "one image per class")),
                "compute_seconds": seconds,
            },
        )
        frame.unpersist()


# -- preprocessed_images, rejected_images ---------------------------------------------------------
def rejections(raw_images) -> list[tuple]:
    """(stage, reason, files) of the rejected files, most frequent first (a job on two small
    columns of raw_images, not on the images)."""
    counts = raw_images.where("reason IS NOT NULL").groupBy("stage", "reason").count().collect()
    return sorted(((r["stage"], r["reason"], r["count"]) for r in counts), key=lambda r: -r[2])


@spark_asset(kinds={"spark"}, metadata={PUBLISHED_BY_CHECK: "counts_reconcile"})
def preprocessed_images(context: dg.AssetExecutionContext, raw_images):
    """Decoded, RGB, resized images as compact uint8 arrays."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    settings = settings_of(context)
    size = settings.image_size
    spark = spark_for(context, "preprocessed_images")
    usable = raw_images.where(F.col("reason").isNull())
    valid = usable.count()  # a small column: Parquet reads it alone
    rejected = sum(r[2] for r in rejections(raw_images))
    # Incremental: an image whose path and bytes are unchanged, at the same size, keeps its arrays.
    stored = previous_version(context, "preprocessed_images", "fingerprint")
    plan = reuse_plan(stored, F.col("image_size") == size, usable, ["path", "fingerprint"], PREPROCESSED_COLUMNS)
    counts = plan.counts
    bytes_per_image = size * size * 3
    context.log.info(
        f"preprocessed_images: {valid} images ({counts['computed']} to decode, {counts['reused']} reused, "
        f"{counts['removed']} removed since), {rejected} rejected"
    )
    work = split_for_work(
        plan.new, counts["computed"], spark, settings.rows_per_partition, scanned_rows=plan.scanned_rows
    )
    decoded = preprocess_frame(work, size).withColumn("image_size", F.lit(size))
    return dg.Output(
        plan.output(decoded),
        metadata={
            "rows": valid,
            **counts,
            "reused_by_reference": counts["reused"] - plan.copied_rows,
            "image_size": size,
            "bytes_per_image": bytes_per_image,
            "storage_note": f"uint8 RGB {size}x{size}x3 = {bytes_per_image:,} B/image, {PARQUET_CODEC}-compressed "
            f"Parquet (float32 would be {bytes_per_image * 4:,} B)",
            "rejected": rejected,
            "rejected_files": dg.MetadataValue.asset(dg.AssetKey("rejected_images")),
            "max_pixels": MAX_PIXELS,
            "setup_seconds": round(time.perf_counter() - started, 2),
        },
    )


@spark_asset(kinds={"spark"})
def rejected_images(context: dg.AssetExecutionContext, raw_images):
    """Quarantine: every listed file that is not a usable image, and why."""
    from pyspark.sql import functions as F

    spark_for(context, "rejected_images")
    reasons = rejections(raw_images)
    return dg.Output(
        raw_images.where(F.col("reason").isNotNull()).select("path", "split", "label", "reason", "stage"),
        metadata={
            "rows": sum(r[2] for r in reasons),
            "by_reason": dg.MetadataValue.md(
                markdown_table(["stage", "reason", "files"], [list(r) for r in reasons])
                if reasons
                else "No file rejected."
            ),
        },
    )


# -- image_features -------------------------------------------------------------------------------
@spark_asset(kinds={"spark", "tensorflow"}, metadata={PUBLISHED_BY_CHECK: "vectors_complete_and_finite"})
def image_features(context: dg.AssetExecutionContext, preprocessed_images):
    """1280-d MobileNetV2 (ImageNet-style, avg-pooled) feature vectors, one per image."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    settings = settings_of(context)
    spark = spark_for(context, "image_features")
    sizes = [r["image_size"] for r in preprocessed_images.select("image_size").distinct().collect()]
    if len(sizes) != 1:
        raise FruitsConfigError(f"preprocessed_images holds no images, or mixed sizes: {sizes}")
    size = validate_image_size(sizes[0])
    rows = preprocessed_images.count()
    storage = context.resources.settings.storage()
    weights = resolve_weights(settings.model_weights, size, storage)
    key = model_key(weights, size)
    # Incremental: an image whose path and bytes are unchanged keeps its vector, if it came from
    # the same model (weights, size, conversion).
    stored = previous_version(context, "image_features", "fingerprint", "model_key")
    plan = reuse_plan(stored, F.col("model_key") == key, preprocessed_images, ["path", "fingerprint"], FEATURE_COLUMNS)
    counts = plan.counts
    threads = settings.model_threads or int(spark.conf.get("spark.task.cpus", "1"))
    model = None
    if counts["computed"]:
        model = feature_model(weights, size, storage, join(settings.assets_uri(), "_models"))
        computed = featurize_frame(
            spark,
            split_for_work(
                plan.new, counts["computed"], spark, settings.rows_per_partition, scanned_rows=plan.scanned_rows
            ),
            model,
            threads,
            settings.predict_batch_size,
        )
    else:  # nothing new: the version is the reused rows (an empty frame of the right columns)
        computed = stored.select(*FEATURE_COLUMNS).limit(0)
    context.log.info(f"image_features: {rows} images, {counts['computed']} to featurize, {counts['reused']} reused")
    if not weights.meaningful:
        context.log.warning("image_features: weights=random: these features are NOT meaningful.")
    import ai_edge_litert
    import pyspark

    return dg.Output(
        plan.output(computed),
        metadata={
            "rows": rows,
            **counts,
            "reused_by_reference": counts["reused"] - plan.copied_rows,
            "dimension": FEATURE_DIM,
            "image_size": size,
            "weights": weights.spec,
            "weights_sha256": weights.sha256,
            "weights_meaningful": weights.meaningful,
            "engine": "LiteRT (XNNPACK, fp32), converted from the Keras model",
            "litert_model": key
            if model is None
            else f"{key} ({'cached' if model.from_cache else 'converted in this run'})",
            "litert_vs_keras_max_abs_diff": model.max_abs_diff
            if model is not None and model.max_abs_diff is not None
            else "not converted in this run (cached, or nothing to featurize)",
            "model_threads_per_worker": threads,
            "predict_batch_size": settings.predict_batch_size,
            "versions": f"ai-edge-litert {ai_edge_litert.__version__}, spark {pyspark.__version__}",
            "setup_seconds": round(time.perf_counter() - started, 2),
        },
    )


# -- pca_model ------------------------------------------------------------------------------------
class PcaConfig(dg.Config):
    train_split: str = Field(default=TRAIN_SPLIT, description="The split PCA is fitted on.")


@spark_asset(kinds={"spark"})
def pca_model(context: dg.AssetExecutionContext, config: PcaConfig, image_features) -> dg.Output:
    """Spark ML PCA fitted on the Training split, k chosen by explained variance."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    started = time.perf_counter()
    settings = settings_of(context)
    spark = spark_for(context, "pca_model")
    train = as_vectors(image_features.where(F.col("split") == config.train_split)).select("features", "label").cache()
    train_rows = train.count()
    if train_rows == 0:
        raise FruitsConfigError(f"No valid image in the {config.train_split!r} split: PCA is fitted on it only.")
    model = fit_pca(train, FEATURE_DIM, train_rows, settings.pca_variance, settings.pca_max_k)
    seconds = time.perf_counter() - started
    algebra, native = linear_algebra(spark)
    if not native:
        context.log.warning(
            f"pca_model: Spark ML's linear algebra is not native ({algebra}): the fit is ~2x slower. "
            "Install OpenBLAS (README, Requirements)."
        )
    sample = (  # a bounded sample for the scatter plot, not the data set
        model.spark_model.transform(train)
        .select(vector_to_array("pca")[0].alias("pc_1"), vector_to_array("pca")[1].alias("pc_2"), "label")
        .limit(SCATTER_POINTS)
        .collect()
    )
    train.unpersist()
    if model.capped:
        context.log.warning(
            f"pca_model: max_k={model.max_k} reaches only {model.cumulative_variance:.3f} of the "
            f"variance (target {model.variance_target})."
        )
    scores = np.array([[r["pc_1"], r["pc_2"] if r["pc_2"] is not None else 0.0] for r in sample])
    metadata = pca_metadata(model, seconds)
    metadata["linear_algebra"] = algebra
    metadata["scree_plot"] = dg.MetadataValue.md(
        markdown_image(scree_plot(model.explained_variance, model.k, model.variance_target), "scree")
    )
    metadata["first_two_components"] = dg.MetadataValue.md(
        markdown_image(scatter_plot(scores, [r["label"] for r in sample]), "pc_1 vs pc_2")
    )
    return dg.Output(model, metadata=metadata)


SCATTER_POINTS = 2000


def pca_metadata(model: PcaModel, seconds: float) -> dict:
    return {
        "k": model.k,
        "variance_target": model.variance_target,
        "cumulative_explained_variance": round(model.cumulative_variance, 4),
        "capped_by_max_k": model.capped,
        "max_k": model.max_k,
        "train_rows": model.train_rows,
        "fit_seconds": round(seconds, 2),
    }


# -- pca_features_csv -----------------------------------------------------------------------------
@spark_asset(kinds={"spark", "csv"}, metadata={PUBLISHED_BY_CHECK: "csv_matches_features"})
def pca_features_csv(context: dg.AssetExecutionContext, image_features, pca_model: PcaModel):
    """One CSV: path, label, split and the k principal components of every valid image."""
    spark_for(context, "pca_features_csv")
    projected = project_frame(image_features, pca_model.spark_model)
    return dg.Output(
        CsvTable(projected, pca_model.k, "pca_features.csv"),
        metadata={"columns": 3 + pca_model.k, "k": pca_model.k},
    )


# -- pca_quality ----------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    kinds={"scikitlearn"},
    code_version="1",
    required_resource_keys={"settings"},
    check_specs=[
        dg.AssetCheckSpec(
            "accuracy_above_floor",
            asset="pca_quality",
            description="Test accuracy of a classifier on the PCA features reaches the floor.",
        )
    ],
)
@clear_errors
def pca_quality(context: dg.AssetExecutionContext, pca_features_csv):
    """Are k and the input size good enough? Logistic regression on Training rows, scored on Test."""
    floor = settings_of(context).min_accuracy
    result = evaluate(pca_features_csv)
    per_class = result.per_class.round(3)
    context.log.info(f"pca_quality: accuracy {result.accuracy:.3f}, macro F1 {result.macro_f1:.3f}")
    yield dg.Output(
        {
            "accuracy": result.accuracy,
            "macro_f1": result.macro_f1,
            "per_class": per_class.to_dict(orient="records"),
            "train_rows": result.train_rows,
            "test_rows": result.test_rows,
        },
        metadata={
            "accuracy": round(result.accuracy, 4),
            "macro_f1": round(result.macro_f1, 4),
            "train_rows": result.train_rows,
            "test_rows": result.test_rows,
            "classifier": "LogisticRegression (scikit-learn) on the pc_* columns, Training -> Test",
            "per_class": dg.MetadataValue.md(markdown_table(list(per_class.columns), per_class.values.tolist())),
            "confusion_matrix": dg.MetadataValue.md(
                markdown_image(confusion_plot(result.confusion, result.classes), "confusion matrix")
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name="accuracy_above_floor",
        passed=result.accuracy >= floor,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"accuracy": round(result.accuracy, 4), "floor": floor},
    )
