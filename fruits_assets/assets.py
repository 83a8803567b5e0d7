"""The asset graph: thin assets over the plain functions of the other modules.

raw_images -> preprocessed_images (+ rejected_images) -> image_features -> pca_model -> pca_features_csv
"""


import functools
import inspect
import time
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from fruits_assets.featurize import resolve_weights
from fruits_assets.images import MAX_PIXELS
from fruits_assets.io_managers import CsvTable, config_errors_fail_once
from fruits_assets.listing import list_images
from fruits_assets.pca import PcaModel, fit_pca
from fruits_assets.plots import (
    confusion_plot,
    markdown_image,
    scatter_plot,
    scree_plot,
    thumbnail_sheet,
)
from fruits_assets.quality import evaluate
from fruits_assets.sample_data import generate_sample
from fruits_assets.settings import (
    FEATURE_DIM,
    SAMPLE_IMAGES_MARKER,
    TRAIN_SPLIT,
    FruitsConfigError,
    default_float,
    default_image_size,
    default_images_root,
    default_int,
    default_output_root,
    default_weights,
    validate_image_size,
    validate_pca_settings,
)
from fruits_assets.spark_jobs import (
    as_vectors,
    balanced_for_featurization,
    featurize_frame,
    preprocess_frame,
    project_frame,
    raw_images_frame,
)

GROUP = "fruits"
# Steps that talk to S3 or EMR retry transient faults (throttling, a dropped connection) with
# backoff; a configuration error (dg.Failure with allow_retries=False) is never retried.
S3_RETRY = dg.RetryPolicy(
    max_retries=default_int("FRUITS_MAX_RETRIES", 2),
    delay=default_float("FRUITS_RETRY_DELAY_SECONDS", 5.0),
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)
# Every asset runs Spark: on EMR, the step launcher runs it on the cluster.
SPARK_RESOURCES = {"pyspark", "pyspark_step_launcher", "storage"}


def clear_errors(fn):
    """A configuration error fails the step at once, with its own message as the headline."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            with config_errors_fail_once():
                yield from fn(*args, **kwargs)

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with config_errors_fail_once():
            return fn(*args, **kwargs)

    return wrapper


def spark_for(context: dg.AssetExecutionContext, name: str):
    """The Spark session, with jobs labelled by asset in the Spark UI."""
    spark = context.resources.pyspark.spark_session
    spark.sparkContext.setJobDescription(f"fruits: {name}")
    return spark


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# -- raw_images ---------------------------------------------------------------------------------
class RawImagesConfig(dg.Config):
    images_root: str = Field(
        default=default_images_root(),
        description="Folder or s3:// URI in the Fruits-360 layout <split>/<Class Name>/<file>; "
        "'sample' = a generated synthetic sample (FRUITS_IMAGES_ROOT).",
    )
    splits: list[str] = Field(
        default=[],
        description="Only these top folders (e.g. ['Test']); empty = every split. Rows of other "
        "splits are not listed, so downstream assets only see these.",
    )
    limit_per_class: int = Field(
        default=default_int("FRUITS_LIMIT_PER_CLASS", 0),
        description="Keep at most this many images per split and class; 0 = all "
        "(FRUITS_LIMIT_PER_CLASS).",
    )


THUMBNAIL_CLASSES = 24


def class_thumbnails(images, storage) -> bytes:
    """The first image of the first classes (a few small reads on the driver, not the data set)."""
    first: dict[str, str] = {}
    for f in images:
        if f.label not in first and len(first) < THUMBNAIL_CLASSES:
            first[f.label] = f.path
    samples = []
    for label, path in sorted(first.items()):
        try:
            samples.append((label, storage.read_bytes(path)))
        except Exception:  # unreadable: it is quarantined downstream; show the name only
            samples.append((label, b""))
    return thumbnail_sheet(samples)


def resolve_images_root(images_root: str, storage) -> str:
    root = images_root.strip()
    if root == SAMPLE_IMAGES_MARKER:
        return str(generate_sample(Path(default_output_root()) / "sample_images"))
    if not storage.root_exists(root):
        raise FruitsConfigError(
            f"Images root {root!r} does not exist or is empty: set FRUITS_IMAGES_ROOT (or the "
            "raw_images `images_root` config) to a folder or s3:// URI laid out as "
            "<split>/<Class Name>/<file>.jpg, or to 'sample'."
        )
    return root


@dg.asset(
    group_name=GROUP,
    kinds={"spark", "python"},
    required_resource_keys=SPARK_RESOURCES,
    code_version="1",
    retry_policy=S3_RETRY,
)
@clear_errors
def raw_images(context: dg.AssetExecutionContext, config: RawImagesConfig):
    """Every file under the images root: path, split, class label and bytes."""
    started = time.perf_counter()
    storage = context.resources.storage.get()
    root = resolve_images_root(config.images_root, storage)
    listed, skipped = list_images(storage, root, config.limit_per_class, config.splits)
    images = [f for f in listed if f.reason is None]
    if not images:
        raise FruitsConfigError(
            f"No image file found under {root!r} in the layout <split>/<Class Name>/<file>.jpg "
            f"({len(listed)} other files found)."
        )
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # Cached: the totals below and the IO manager's write read each file once, not twice.
    frame = raw_images_frame(spark_for(context, "raw_images"), listed, storage).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    totals = frame.agg(
        F.sum("size").alias("bytes"),
        F.sum(F.col("reason").startswith("unreadable").cast("int")).alias("unreadable"),
    ).first()
    counts: dict[tuple, int] = {}
    for f in images:
        counts[(f.split, f.label)] = counts.get((f.split, f.label), 0) + 1
    splits = sorted({s for s, _ in counts})
    labels = sorted({label for _, label in counts})
    table = [[label, *[counts.get((s, label), 0) for s in splits]] for label in labels]
    table.append(["**total**", *[sum(c for (s, _), c in counts.items() if s == split) for split in splits]])
    seconds = round(time.perf_counter() - started, 2)
    context.log.info(f"raw_images: {len(listed)} files under {root} ({len(images)} images) in {seconds}s")
    yield dg.Output(
        frame,
        metadata={
            "images_root": root,
            "rows": len(listed),
            "images": len(images),
            "rejected_at_listing": len(listed) - len(images),
            "unreadable": totals["unreadable"] or 0,
            "skipped_by_limit": skipped,
            "total_bytes": totals["bytes"] or 0,
            "classes": len(labels),
            "images_per_class": dg.MetadataValue.md(markdown_table(["class", *splits], table)),
            "thumbnails": dg.MetadataValue.md(markdown_image(class_thumbnails(images, storage), "one image per class")),
            "compute_seconds": seconds,
        },
    )
    frame.unpersist()


# -- preprocessed_images, rejected_images ---------------------------------------------------------
class PreprocessConfig(dg.Config):
    image_size: int = Field(
        default=default_image_size(),
        description="Model input size in pixels: 96, 128, 160, 192 or 224 (FRUITS_IMAGE_SIZE).",
    )


@dg.multi_asset(
    outs={
        "preprocessed_images": dg.AssetOut(
            group_name=GROUP,
            kinds={"spark"},
            code_version="1",
            description="Decoded, RGB, resized images as compact uint8 arrays.",
        ),
        "rejected_images": dg.AssetOut(
            group_name=GROUP,
            kinds={"spark"},
            code_version="1",
            description="Quarantine: every listed file that is not a usable image, and why.",
        ),
    },
    ins={"raw_images": dg.AssetIn()},
    required_resource_keys=SPARK_RESOURCES,
    retry_policy=S3_RETRY,
)
@clear_errors
def preprocessed_images(context: dg.AssetExecutionContext, config: PreprocessConfig, raw_images):
    """Decoded, RGB, resized images as compact uint8 arrays, and the rejected files."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started = time.perf_counter()
    size = validate_image_size(config.image_size)
    spark_for(context, "preprocessed_images")
    decoded = preprocess_frame(raw_images, size).persist(StorageLevel.MEMORY_AND_DISK)
    by_reason = decoded.groupBy("stage", "reason").count().collect()  # a few rows, not images
    valid = sum(r["count"] for r in by_reason if r["reason"] is None)
    rejected = [r for r in by_reason if r["reason"] is not None]
    bytes_per_image = size * size * 3
    seconds = round(time.perf_counter() - started, 2)
    context.log.info(f"preprocessed_images: {valid} images, {sum(r['count'] for r in rejected)} rejected")
    yield dg.Output(
        decoded.where(F.col("reason").isNull()).select(
            "path", "split", "label", "image", F.lit(size).alias("image_size")
        ),
        output_name="preprocessed_images",
        metadata={
            "rows": valid,
            "image_size": size,
            "bytes_per_image": bytes_per_image,
            "storage_note": f"uint8 RGB {size}x{size}x3 = {bytes_per_image:,} B/image "
            f"(float32 would be {bytes_per_image * 4:,} B)",
            "rejected": sum(r["count"] for r in rejected),
            "rejected_files": dg.MetadataValue.asset(dg.AssetKey("rejected_images")),
            "max_pixels": MAX_PIXELS,
            "compute_seconds": seconds,
        },
    )
    reasons = sorted(((r["stage"], r["reason"], r["count"]) for r in rejected), key=lambda r: -r[2])
    yield dg.Output(
        decoded.where(F.col("reason").isNotNull()).select("path", "split", "label", "reason", "stage"),
        output_name="rejected_images",
        metadata={
            "rows": sum(r[2] for r in reasons),
            "by_reason": dg.MetadataValue.md(
                markdown_table(["stage", "reason", "files"], [list(r) for r in reasons])
                if reasons
                else "No file rejected."
            ),
        },
    )
    decoded.unpersist()


# -- image_features -------------------------------------------------------------------------------
class FeaturesConfig(dg.Config):
    weights: str = Field(
        default=default_weights(),
        description="'imagenet' (Keras download/cache), a local path or s3:// URI of a Keras "
        "MobileNetV2 weights file, or 'random' (seeded; smoke tests only) (FRUITS_MODEL_WEIGHTS).",
    )
    predict_batch_size: int = Field(
        default=default_int("FRUITS_PREDICT_BATCH_SIZE", 32),
        description="Images per MobileNetV2 call in a worker (FRUITS_PREDICT_BATCH_SIZE). 32 is "
        "as fast as 64 on CPU and needs ~0.5 GB less per worker at 224 px (benchmarks/README.md).",
    )
    tf_threads: int = Field(
        default=default_int("FRUITS_TF_THREADS", 0),
        description="TensorFlow threads per Python worker; 0 = spark.task.cpus (FRUITS_TF_THREADS).",
    )


@dg.asset(
    group_name=GROUP,
    kinds={"spark", "tensorflow"},
    required_resource_keys=SPARK_RESOURCES,
    code_version="1",
    retry_policy=S3_RETRY,
)
@clear_errors
def image_features(context: dg.AssetExecutionContext, config: FeaturesConfig, preprocessed_images):
    """1280-d MobileNetV2 (ImageNet-style, avg-pooled) feature vectors, one per image."""
    started = time.perf_counter()
    spark = spark_for(context, "image_features")
    sizes = [r["image_size"] for r in preprocessed_images.select("image_size").distinct().collect()]
    if len(sizes) != 1:
        raise FruitsConfigError(f"preprocessed_images holds no images, or mixed sizes: {sizes}")
    size = validate_image_size(sizes[0])
    rows = preprocessed_images.count()
    weights = resolve_weights(config.weights, size, context.resources.storage.get())
    threads = config.tf_threads or int(spark.conf.get("spark.task.cpus", "1"))
    features = featurize_frame(
        spark,
        balanced_for_featurization(preprocessed_images, rows, spark),
        weights,
        size,
        threads,
        config.predict_batch_size,
    )
    if not weights.meaningful:
        context.log.warning("image_features: weights=random: these features are NOT meaningful.")
    import keras
    import pyspark
    import tensorflow as tf

    return dg.Output(
        features,
        metadata={
            "rows": rows,
            "dimension": FEATURE_DIM,
            "image_size": size,
            "weights": weights.spec,
            "weights_sha256": weights.sha256,
            "weights_meaningful": weights.meaningful,
            "tf_threads_per_worker": threads,
            "predict_batch_size": config.predict_batch_size,
            "versions": f"tensorflow {tf.__version__}, keras {keras.__version__}, "
            f"spark {pyspark.__version__}",
            "setup_seconds": round(time.perf_counter() - started, 2),
        },
    )


# -- pca_model ------------------------------------------------------------------------------------
class PcaConfig(dg.Config):
    variance_target: float = Field(
        default=default_float("FRUITS_PCA_VARIANCE", 0.95),
        description="Keep the smallest k reaching this explained-variance ratio, in (0, 1] "
        "(FRUITS_PCA_VARIANCE).",
    )
    max_k: int = Field(
        default=default_int("FRUITS_PCA_MAX_K", 300),
        description="Never keep more than this many components (FRUITS_PCA_MAX_K).",
    )
    train_split: str = Field(default=TRAIN_SPLIT, description="The split PCA is fitted on.")


@dg.asset(
    group_name=GROUP,
    kinds={"spark"},
    required_resource_keys=SPARK_RESOURCES,
    code_version="1",
    retry_policy=S3_RETRY,
)
@clear_errors
def pca_model(context: dg.AssetExecutionContext, config: PcaConfig, image_features) -> dg.Output:
    """Spark ML PCA fitted on the Training split, k chosen by explained variance."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    started = time.perf_counter()
    validate_pca_settings(config.variance_target, config.max_k)
    spark_for(context, "pca_model")
    train = (
        as_vectors(image_features.where(F.col("split") == config.train_split))
        .select("features", "label")
        .cache()
    )
    train_rows = train.count()
    if train_rows == 0:
        raise FruitsConfigError(
            f"No valid image in the {config.train_split!r} split: PCA is fitted on it only."
        )
    model = fit_pca(train, FEATURE_DIM, train_rows, config.variance_target, config.max_k)
    seconds = time.perf_counter() - started
    sample = (  # a bounded sample for the scatter plot, not the data set
        model.spark_model.transform(train)
        .select(vector_to_array("pca")[0].alias("pc_1"), vector_to_array("pca")[1].alias("pc_2"), "label")
        .limit(SCATTER_POINTS)
        .collect()
    )
    train.unpersist()
    if model.capped:
        context.log.warning(
            f"pca_model: max_k={config.max_k} reaches only {model.cumulative_variance:.3f} of the "
            f"variance (target {config.variance_target})."
        )
    scores = np.array([[r["pc_1"], r["pc_2"] if r["pc_2"] is not None else 0.0] for r in sample])
    metadata = pca_metadata(model, seconds)
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
@dg.asset(
    group_name=GROUP,
    kinds={"spark", "csv"},
    required_resource_keys=SPARK_RESOURCES,
    code_version="1",
    retry_policy=S3_RETRY,
)
@clear_errors
def pca_features_csv(context: dg.AssetExecutionContext, image_features, pca_model: PcaModel):
    """One CSV: path, label, split and the k principal components of every valid image."""
    spark_for(context, "pca_features_csv")
    projected = project_frame(image_features, pca_model.spark_model)
    return dg.Output(
        CsvTable(projected, pca_model.k, "pca_features.csv"),
        metadata={"columns": 3 + pca_model.k, "k": pca_model.k},
    )


# -- pca_quality ----------------------------------------------------------------------------------
class QualityConfig(dg.Config):
    accuracy_floor: float = Field(
        default=default_float("FRUITS_MIN_ACCURACY", 0.8),
        description="The accuracy_above_floor check warns below this Test accuracy (FRUITS_MIN_ACCURACY).",
    )


@dg.asset(
    group_name=GROUP,
    kinds={"scikitlearn"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "accuracy_above_floor",
            asset="pca_quality",
            description="Test accuracy of a classifier on the PCA features reaches the floor.",
        )
    ],
)
@clear_errors
def pca_quality(context: dg.AssetExecutionContext, config: QualityConfig, pca_features_csv):
    """Are k and the input size good enough? Logistic regression on Training rows, scored on Test."""
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
            "per_class": dg.MetadataValue.md(
                markdown_table(list(per_class.columns), per_class.values.tolist())
            ),
            "confusion_matrix": dg.MetadataValue.md(
                markdown_image(confusion_plot(result.confusion, result.classes), "confusion matrix")
            ),
        },
    )
    yield dg.AssetCheckResult(
        check_name="accuracy_above_floor",
        passed=result.accuracy >= config.accuracy_floor,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"accuracy": round(result.accuracy, 4), "floor": config.accuracy_floor},
    )
