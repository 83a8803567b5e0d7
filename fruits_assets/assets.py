"""The asset graph: thin assets over the plain functions of the other modules.

raw_images -> preprocessed_images -> image_features -> pca_model -> pca_features_csv -> pca_quality
           -> rejected_images
"""

import time
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import numpy as np
from pydantic import Field

from fruits_assets.constants import FEATURE_DIM, SAMPLE_IMAGES, TRAIN_SPLIT
from fruits_assets.csv_table import CsvTable
from fruits_assets.errors import FruitsConfigError, config_errors_not_retried
from fruits_assets.featurize import (
    FEATURE_COLUMNS,
    feature_model,
    featurize_frame,
    model_key,
    model_metadata,
    resolve_weights,
)
from fruits_assets.images import MAX_PIXELS
from fruits_assets.incremental import Stage, run_stage
from fruits_assets.listing import check_images_root, images_per_class, list_images, usable_images
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
from fruits_assets.sample_data import sample_images
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
    raw_images_summary,
)
from fruits_assets.storage import join

GROUP = "fruits"
# Steps that talk to S3 or EMR retry transient faults with backoff; a configuration error
# (dg.Failure with allow_retries=False, errors.py) is not retried. Two paths, one policy: an error
# in the asset's Python (throttling, a dropped connection, a Spark job that lost its Spot node) is
# retried by this policy where the asset runs (on EMR its events carry the retry back); an EMR step
# that failed as a process (its node lost, a Spot reclaim, throttling) is retried by the step
# launcher with this policy's retries and delay, when `emr_launcher.step_verdict` finds it transient.
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
        )(config_errors_not_retried(fn))

    return decorate


def settings_of(context) -> FruitsSettings:
    """The run's settings (resolved when the run started)."""
    return context.resources.settings.resolved()


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


# A file whose path and identity (size and content hash; S3: size and ETag) are unchanged keeps its
# row, bytes and verdict; only new or changed files are read and checked.
RAW_STAGE = Stage("raw_images", keys=("path", "identity"), columns=RAW_COLUMNS, reported=("stage", "size"))


def images_root(settings: FruitsSettings, storage) -> str:
    """The folder or s3:// URI to list: the setting, or the synthetic sample, generated beside the
    assets on first use (uploaded there once on EMR)."""
    root = settings.images_root.strip()
    if root == SAMPLE_IMAGES:
        return sample_images(join(settings.assets_uri(), "sample_images"), storage)
    return check_images_root(root, storage)


@spark_asset(kinds={"spark", "python"})
def raw_images(context: dg.AssetExecutionContext, config: RawImagesConfig):
    """Every file under the images root: path, split, class label and bytes."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started, settings, storage = time.perf_counter(), settings_of(context), context.resources.settings.storage()
    root = images_root(settings, storage)
    with ThreadPoolExecutor(2, thread_name_prefix="raw_images") as background:
        starting = background.submit(lambda: spark_for(context, "raw_images"))  # the JVM starts while files are listed
        listed, skipped = list_images(storage, root, settings.limit_per_class, config.splits)
        images = usable_images(listed, root)
        thumbnails = background.submit(class_thumbnails, images, storage)  # drawn while Spark works
        spark = starting.result()

        def read_and_check(work, counts):  # cached: the summary and the write read each file once
            first_run = counts["reused"] == 0  # Spark then reads the whole root itself
            return raw_images_frame(spark, work, root, storage, first_run).persist(StorageLevel.MEMORY_AND_DISK)

        listing = listing_frame(spark, listed)
        run = run_stage(context, RAW_STAGE, listing, F.expr(RAW_REUSABLE), read_and_check, settings.rows_per_partition)
        summary = raw_images_summary(run.computed, run.kept)
        seconds = round(time.perf_counter() - started, 2)
        context.log.info(f"raw_images: {len(listed)} files under {root} ({summary['images']} images) in {seconds}s")
        yield dg.Output(
            run.output,
            metadata={
                "images_root": root,
                "rows": len(listed),
                **run.metadata,
                **summary,
                "rejected_at_listing": len(listed) - len(images),
                "skipped_by_limit": skipped,
                "classes": len({f.label for f in images}),
                "images_per_class": dg.MetadataValue.md(markdown_table(*images_per_class(images))),
                "thumbnails": dg.MetadataValue.md(markdown_image(thumbnails.result(), "one image per class")),
                "compute_seconds": seconds,
            },
        )
        run.computed.unpersist()


# -- preprocessed_images, rejected_images ---------------------------------------------------------
def rejections(raw_images) -> list[tuple]:
    """(stage, reason, files) of the rejected files, most frequent first (a job on two small
    columns of raw_images, not on the images)."""
    counts = raw_images.where("reason IS NOT NULL").groupBy("stage", "reason").count().collect()
    return sorted(((r["stage"], r["reason"], r["count"]) for r in counts), key=lambda r: -r[2])


# An image whose path and bytes are unchanged keeps its arrays, at the same size.
PREPROCESSED_STAGE = Stage("preprocessed_images", keys=("path", "fingerprint"), columns=PREPROCESSED_COLUMNS)


@spark_asset(kinds={"spark"})
def preprocessed_images(context: dg.AssetExecutionContext, raw_images):
    """Decoded, RGB, resized images as compact uint8 arrays."""
    from pyspark.sql import functions as F

    started, settings = time.perf_counter(), settings_of(context)
    size, bytes_per_image = settings.image_size, settings.image_size**2 * 3
    spark_for(context, "preprocessed_images")
    usable = raw_images.where(F.col("reason").isNull())
    rejected = sum(r[2] for r in rejections(raw_images))

    def decode(work, _counts):
        return preprocess_frame(work, size).withColumn("image_size", F.lit(size))

    run = run_stage(
        context, PREPROCESSED_STAGE, usable, F.col("image_size") == size, decode, settings.rows_per_partition
    )
    return dg.Output(
        run.output,
        metadata={
            "rows": run.counts["reused"] + run.counts["computed"],
            **run.metadata,
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
# An image whose path and bytes are unchanged keeps its vector, if it came from the same model
# (weights, size, conversion: `model_key`).
FEATURES_STAGE = Stage("image_features", keys=("path", "fingerprint"), columns=FEATURE_COLUMNS)


@spark_asset(kinds={"spark", "tensorflow"})
def image_features(context: dg.AssetExecutionContext, preprocessed_images):
    """1280-d MobileNetV2 (ImageNet-style, avg-pooled) feature vectors, one per image."""
    from pyspark.sql import functions as F

    started, settings, storage = time.perf_counter(), settings_of(context), context.resources.settings.storage()
    spark = spark_for(context, "image_features")
    sizes = [r["image_size"] for r in preprocessed_images.select("image_size").distinct().collect()]
    if len(sizes) != 1:
        raise FruitsConfigError(f"preprocessed_images holds no images, or mixed sizes: {sizes}")
    size = validate_image_size(sizes[0])
    weights = resolve_weights(settings.model_weights, size, storage)
    threads = settings.model_threads or int(spark.conf.get("spark.task.cpus", "1"))
    models = []  # the model, when there is something to featurize

    def featurize(work, _counts):
        models.append(feature_model(weights, size, storage, settings.model_cache_uri()))
        return featurize_frame(spark, work, models[0], threads, settings.predict_batch_size)

    key = model_key(weights.sha256, size)
    run = run_stage(
        context, FEATURES_STAGE, preprocessed_images, F.col("model_key") == key, featurize, settings.rows_per_partition
    )
    if not weights.meaningful:
        context.log.warning("image_features: weights=random: these features are NOT meaningful.")
    return dg.Output(
        run.output,
        metadata={
            "rows": run.counts["reused"] + run.counts["computed"],
            **run.metadata,
            "dimension": FEATURE_DIM,
            "image_size": size,
            **model_metadata(weights, key, models[0] if models else None),
            "model_threads_per_worker": threads,
            "predict_batch_size": settings.predict_batch_size,
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
@spark_asset(kinds={"spark", "csv"})
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
@config_errors_not_retried
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
