"""The asset graph: thin assets over the plain functions of the other modules.

photos -> raw_images -> preprocessed_images -> image_features -> pca_model -> pca_features_csv -> pca_quality
                     -> rejected_images  input_size -^    model_weights -^   pca_settings -^
(the four sources are observed, never written: sources.py)

Each asset returns a data version that follows what it holds (its rows' keys and the settings
that made them, or its inputs' data versions), and a signature of what it was made from: a step
whose signature is its current version's computes nothing (`incremental.unchanged_version`).
"""

import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dagster as dg
import numpy as np
from pydantic import Field

from fruits_assets.constants import FEATURE_DIM, SAMPLE_IMAGES, TRAIN_SPLIT
from fruits_assets.csv_table import CSV_VERSION, CsvTable
from fruits_assets.errors import FruitsConfigError, config_errors_not_retried
from fruits_assets.featurize import (
    CONVERSION_VERSION,
    FEATURE_COLUMNS,
    convert_ahead,
    feature_model,
    featurize_frame,
    model_key,
    model_metadata,
    resolve_weights,
)
from fruits_assets.images import CHECK_VERSION, DECODE_VERSION, MAX_PIXELS
from fruits_assets.incremental import (
    DriverRows,
    Stage,
    current_version,
    digest,
    input_versions,
    run_stage,
    unchanged_output,
    unchanged_version,
    versioned_output,
)
from fruits_assets.listing import LAYOUT_VERSION, check_images_root, images_per_class, list_images, usable_images
from fruits_assets.pca import PCA_VERSION, PcaModel, fit_pca, linear_algebra
from fruits_assets.plots import (
    class_thumbnails,
    confusion_plot,
    markdown_image,
    markdown_table,
    scatter_plot,
    scree_plot,
)
from fruits_assets.quality import EVALUATION_VERSION, evaluate
from fruits_assets.sample_data import sample_images
from fruits_assets.settings import FruitsSettings, validate_image_size
from fruits_assets.sources import (
    SOURCES,
    input_size_version,
    model_weights_version,
    observed_versions,
    pca_settings_version,
    photos_version,
    record_source,
    sample_photos_version,
)
from fruits_assets.spark import PARQUET_CODEC
from fruits_assets.spark_jobs import (
    LISTING_SCHEMA,
    PREPROCESSED_COLUMNS,
    RAW_COLUMNS,
    RAW_REUSABLE,
    as_vectors,
    listing_rows,
    preprocess_frame,
    project_frame,
    raw_images_frame,
    raw_images_summary,
)
from fruits_assets.storage import join

GROUP = "fruits"
# Beta in Dagster 1.13 and chosen on purpose: observable source assets (the UI shows and observes
# what the assets are made from) and output data versions (what makes its staleness follow the
# data). Their warnings are not repeated at every import of the code location.
for _beta in ("observable_source_asset", "include_sources", "data_version"):
    warnings.filterwarnings("ignore", message=f".*{_beta}.*is currently in beta", category=dg.BetaWarning)
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
# Opt-in declarative automation (README, "Keep it fresh"): the sources are observed every few
# minutes, and an asset is materialized when what it is made from has a new data version. It
# runs only once `fruits_automation` is turned on (definitions.py).
SOURCES_OBSERVED = dg.AutomationCondition.on_cron("*/5 * * * *")
EAGER = dg.AutomationCondition.eager()


def spark_asset(kinds: set[str], code_version: str, **kwargs):
    """The decorator of an asset computed with Spark (one place for what they share)."""

    def decorate(fn):
        return dg.asset(
            group_name=GROUP,
            kinds=kinds,
            required_resource_keys=SPARK_RESOURCES,
            code_version=code_version,
            retry_policy=S3_RETRY,
            automation_condition=EAGER,
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


def signature_of(context, code_version: str, inputs: tuple[str, ...], *settings) -> str | None:
    """What a step's output is made from: its code, its inputs' data versions, its settings
    (None when an input's version is unknown: an asset invoked as a function)."""
    versions = input_versions(context, *inputs)
    return None if versions is None else digest(code_version, versions, *settings)


def photos_of(settings: FruitsSettings, root: str, versions: dict) -> str:
    """The `photos` data version of this run's listing (the sample's, for the generated one)."""
    if settings.images_root.strip() == SAMPLE_IMAGES:
        return sample_photos_version(settings.limit_per_class)
    return photos_version(versions, root, settings.limit_per_class)[0]


def images_root(settings: FruitsSettings, storage) -> str:
    """The folder or s3:// URI to list: the setting, or the synthetic sample, generated beside the
    assets on first use (uploaded there once on EMR)."""
    root = settings.images_root.strip()
    if root == SAMPLE_IMAGES:
        return sample_images(join(settings.assets_uri(), "sample_images"), storage)
    return check_images_root(root, storage)


def convert_model_ahead(context, settings: FruitsSettings, storage) -> None:
    """When this run will featurize images at the size it preprocesses them (raw_images or
    preprocessed_images has new work, and both preprocessed_images and image_features are
    selected), start converting the model now, in the background (`featurize.convert_ahead`),
    so that image_features does not wait for it. Only in the local deployment: on EMR the host
    converts the model before the image_features step (emr_launcher)."""
    try:  # the run's selection (None for a job of exactly the selected assets: dg.materialize)
        selected = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    except dg.DagsterError:  # an asset invoked as a function has no run (DagsterInvalidPropertyError)
        return
    wanted = {dg.AssetKey("preprocessed_images"), dg.AssetKey("image_features")}
    if settings.deployment != "local" or not wanted <= selected:
        return
    try:
        weights = resolve_weights(settings.model_weights, settings.image_size, storage)
    except FruitsConfigError:
        return  # image_features says so, in its own step
    if convert_ahead(weights, settings.image_size, storage, settings.model_cache_uri()):
        context.log.info(f"Converting the {settings.image_size} px LiteRT model in the background, for image_features.")


# -- what the pipeline is made from ----------------------------------------------------------------
@dg.multi_observable_source_asset(
    specs=[dg.AssetSpec(source, group_name=GROUP, automation_condition=SOURCES_OBSERVED) for source in SOURCES],
    name="observe_sources",
    required_resource_keys={"settings"},
    description="The photos, the input size, the model weights and the PCA settings, as they are now "
    "(sources.py): their data versions, nothing read.",
)
def observe_sources(context):
    """One observation of every source, with the settings of the environment (or the run)."""
    settings = context.resources.settings.resolved()
    for source, (version, metadata) in observed_versions(settings, context.resources.settings.storage()).items():
        yield dg.ObserveResult(asset_key=source, data_version=dg.DataVersion(version), metadata=metadata)


# -- raw_images ---------------------------------------------------------------------------------
class RawImagesConfig(dg.Config):
    splits: list[str] = Field(
        default=[],
        description="Only these top folders (e.g. ['Test']); empty = every split. Rows of other "
        "splits are not listed, so downstream assets only see these.",
    )


RAW_VERSION = f"{LAYOUT_VERSION}+{CHECK_VERSION}"
# A file whose path and identity (size and content hash; S3: size and ETag) are unchanged keeps its
# row, bytes and verdict; only new or changed files are read and checked.
RAW_STAGE = Stage("raw_images", keys=("path", "identity"), columns=RAW_COLUMNS, reported=("stage", "size"))


@dataclass
class RootListing:
    """What `raw_images` found under the images root, before Spark reads anything."""

    root: str
    listed: list  # every listed file (listing.ListedFile)
    images: list  # those whose name makes them candidate images
    signature: str  # what a version of raw_images made from this listing holds
    report: dict  # the listing's own metadata (with `photos`: kept in the version's manifest)


def list_root(
    context, settings: FruitsSettings, storage, splits: list[str], photos_seen: Callable[[str], None]
) -> RootListing:
    """List the images root (each file with its identity), and record the `photos` it saw.
    `photos_seen(photos)` is called once the files are listed, before their contents are hashed."""
    root = images_root(settings, storage)
    versions = dict(storage.list_versions(root))
    photos = photos_of(settings, root, versions)
    photos_seen(photos)
    listed, skipped = list_images(storage, root, settings.limit_per_class, splits, versions)
    record_source(context, "photos", photos)
    return RootListing(
        root,
        listed,
        usable_images(listed, root),
        digest(RAW_VERSION, [(f.path, f.identity) for f in listed]),
        {"images_root": root, "rows": len(listed), "skipped_by_limit": skipped, "photos": photos},
    )


def photos_changed(current: dict | None, photos: str) -> bool:
    """Whether raw_images' current version was made from other photos than these (their cheap
    version: paths, sizes, modification times or ETags), so that the run will compute something:
    then the JVM starts while the files are hashed. True for a first run; False for a version that
    does not say (written before it was recorded), so that a run with nothing new starts no JVM.
    Files touched but not changed (new modification times, same bytes) start a JVM that computes
    nothing, in every run until raw_images has a new version: a run with nothing new does not
    rewrite the manifest."""
    return current is None or current.get("photos") not in (None, photos)


def raw_images_metadata(listing: RootListing, summary: dict, thumbnails: str, seconds: float) -> dict:
    images = listing.images
    return {
        **listing.report,
        **summary,
        "rejected_at_listing": len(listing.listed) - len(images),
        "classes": len({f.label for f in images}),
        "images_per_class": dg.MetadataValue.md(markdown_table(*images_per_class(images))),
        "thumbnails": dg.MetadataValue.md(markdown_image(thumbnails, "one image per class")),
        "compute_seconds": seconds,
    }


@spark_asset(kinds={"spark", "python"}, code_version=RAW_VERSION, deps=["photos"])
def raw_images(context: dg.AssetExecutionContext, config: RawImagesConfig):
    """Every file under the images root: path, split, class label and bytes."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    started, settings, storage = time.perf_counter(), settings_of(context), context.resources.settings.storage()
    with ThreadPoolExecutor(2, thread_name_prefix="raw_images") as background:
        current = current_version(context, "raw_images")

        def start_spark_if_changed(photos: str) -> None:  # the JVM starts while files are hashed
            if photos_changed(current, photos):
                background.submit(spark_for, context, "raw_images")
                convert_model_ahead(context, settings, storage)

        listing = list_root(context, settings, storage, config.splits, start_spark_if_changed)
        if manifest := unchanged_version(context, "raw_images", listing.signature):
            yield unchanged_output(manifest, listing.report)
            return
        thumbnails = background.submit(class_thumbnails, listing.images, storage)  # drawn while Spark works
        spark = spark_for(context, "raw_images")

        def read_and_check(work, counts):  # cached: the summary and the write read each file once
            first_run = counts["reused"] == 0  # Spark may then read the whole root itself (on S3)
            frame = raw_images_frame(spark, work, listing.root, storage, first_run)
            return frame.persist(StorageLevel.MEMORY_AND_DISK)

        frame = DriverRows(listing_rows(listing.listed), spark, LISTING_SCHEMA)
        run = run_stage(
            context, RAW_STAGE, frame, F.expr(RAW_REUSABLE), read_and_check, settings.rows_per_partition, (RAW_VERSION,)
        )
        summary = raw_images_summary(run.computed, run.kept)
        seconds = round(time.perf_counter() - started, 2)  # in the metadata (run_stage logged the counts)
        # A version with unreadable files is never kept whole: the next run tries them again.
        kept_signature = listing.signature if not summary["unreadable"] else None
        yield run.result(kept_signature, raw_images_metadata(listing, summary, thumbnails.result(), seconds))
        run.computed.unpersist()


# -- preprocessed_images, rejected_images ---------------------------------------------------------
def rejections(raw_images) -> list[tuple]:
    """(stage, reason, files) of the rejected files, most frequent first (a job on two small
    columns of raw_images, not on the images)."""
    counts = raw_images.where("reason IS NOT NULL").groupBy("stage", "reason").count().collect()
    return sorted(((r["stage"], r["reason"], r["count"]) for r in counts), key=lambda r: -r[2])


# An image whose path and bytes are unchanged keeps its arrays, at the same size.
PREPROCESSED_STAGE = Stage("preprocessed_images", keys=("path", "fingerprint"), columns=PREPROCESSED_COLUMNS)


@spark_asset(kinds={"spark"}, code_version=DECODE_VERSION, deps=["input_size"])
def preprocessed_images(context: dg.AssetExecutionContext, raw_images):
    """Decoded, RGB, resized images as compact uint8 arrays."""
    from pyspark.sql import functions as F

    started, settings = time.perf_counter(), settings_of(context)
    size, bytes_per_image = settings.image_size, settings.image_size**2 * 3
    report = {"image_size": size, "bytes_per_image": bytes_per_image, "max_pixels": MAX_PIXELS}
    report["storage_note"] = (
        f"uint8 RGB {size}x{size}x3 = {bytes_per_image:,} B/image, {PARQUET_CODEC}-compressed "
        f"Parquet (float32 would be {bytes_per_image * 4:,} B)"
    )
    report["rejected_files"] = dg.MetadataValue.asset(dg.AssetKey("rejected_images"))
    record_source(context, "input_size", input_size_version(size))
    signature = signature_of(context, DECODE_VERSION, ("raw_images",), size)
    if manifest := unchanged_version(context, "preprocessed_images", signature):
        return unchanged_output(manifest, report)
    convert_model_ahead(context, settings, context.resources.settings.storage())
    spark_for(context, "preprocessed_images")

    def decode(work, _counts):
        return preprocess_frame(work, size).withColumn("image_size", F.lit(size))

    usable = raw_images.where(F.col("reason").isNull())
    same_size = F.col("image_size") == size
    run = run_stage(
        context, PREPROCESSED_STAGE, usable, same_size, decode, settings.rows_per_partition, (DECODE_VERSION, size)
    )
    rejected = sum(r[2] for r in rejections(raw_images))
    rows = run.counts["reused"] + run.counts["computed"]
    seconds = round(time.perf_counter() - started, 2)
    return run.result(signature, {"rows": rows, **report, "rejected": rejected, "setup_seconds": seconds})


@spark_asset(kinds={"spark"}, code_version=RAW_VERSION)
def rejected_images(context: dg.AssetExecutionContext, raw_images):
    """Quarantine: every listed file that is not a usable image, and why."""
    from pyspark.sql import functions as F

    signature = signature_of(context, RAW_VERSION, ("raw_images",))
    if manifest := unchanged_version(context, "rejected_images", signature):
        return unchanged_output(manifest)
    spark_for(context, "rejected_images")
    reasons = rejections(raw_images)
    by_reason = (
        markdown_table(["stage", "reason", "files"], [list(r) for r in reasons]) if reasons else "No file rejected."
    )
    return versioned_output(
        raw_images.where(F.col("reason").isNotNull()).select("path", "split", "label", "reason", "stage"),
        signature or digest(RAW_VERSION, [list(r) for r in reasons]),
        signature,
        {"rows": sum(r[2] for r in reasons), "by_reason": dg.MetadataValue.md(by_reason)},
    )


# -- image_features -------------------------------------------------------------------------------
def stored_image_size(preprocessed_images) -> int:
    """The size of the stored arrays: from the version's manifest (no Spark), else (a DataFrame
    given to the asset as a function) from the rows."""
    manifest = getattr(preprocessed_images, "manifest", None)
    if manifest and manifest.get("image_size"):
        return manifest["image_size"]
    sizes = [r["image_size"] for r in preprocessed_images.select("image_size").distinct().collect()]
    if len(sizes) != 1:
        raise FruitsConfigError(f"preprocessed_images holds no images, or mixed sizes: {sizes}")
    return sizes[0]


# An image whose path and bytes are unchanged keeps its vector, if it came from the same model
# (weights, size, conversion: `model_key`).
FEATURES_STAGE = Stage("image_features", keys=("path", "fingerprint"), columns=FEATURE_COLUMNS)


@spark_asset(kinds={"spark", "litert"}, code_version=CONVERSION_VERSION, deps=["model_weights"])
def image_features(context: dg.AssetExecutionContext, preprocessed_images):
    """1280-d MobileNetV2 (ImageNet-style, avg-pooled) feature vectors, one per image."""
    from pyspark.sql import functions as F

    started, settings, storage = time.perf_counter(), settings_of(context), context.resources.settings.storage()
    size = validate_image_size(stored_image_size(preprocessed_images))
    weights = resolve_weights(settings.model_weights, size, storage)
    key = model_key(weights.sha256, size)
    record_source(context, "model_weights", model_weights_version(settings.model_weights, storage))
    report = {"dimension": FEATURE_DIM, "image_size": size, "predict_batch_size": settings.predict_batch_size}
    signature = signature_of(context, CONVERSION_VERSION, ("preprocessed_images",), key)
    if manifest := unchanged_version(context, "image_features", signature):
        return unchanged_output(manifest, {**report, **model_metadata(weights, key, None)})
    spark = spark_for(context, "image_features")
    threads = settings.model_threads or int(spark.conf.get("spark.task.cpus", "1"))
    models = []  # the model, when there is something to featurize

    def featurize(work, _counts):
        models.append(feature_model(weights, size, storage, settings.model_cache_uri()))
        return featurize_frame(spark, work, models[0], threads, settings.predict_batch_size, storage, report)

    same_model = F.col("model_key") == key
    run = run_stage(
        context, FEATURES_STAGE, preprocessed_images, same_model, featurize, settings.rows_per_partition, (key,)
    )
    if not weights.meaningful:
        context.log.warning("image_features: weights=random: these features are NOT meaningful.")
    report.update(rows=run.counts["reused"] + run.counts["computed"], model_threads_per_worker=threads)
    report.update(model_metadata(weights, key, models[0] if models else None))
    return run.result(signature, {**report, "setup_seconds": round(time.perf_counter() - started, 2)})


# -- pca_model ------------------------------------------------------------------------------------
class PcaConfig(dg.Config):
    train_split: str = Field(default=TRAIN_SPLIT, description="The split PCA is fitted on.")


SCATTER_POINTS = 2000


@spark_asset(kinds={"spark"}, code_version=PCA_VERSION, deps=["pca_settings"])
def pca_model(context: dg.AssetExecutionContext, config: PcaConfig, image_features) -> dg.Output:
    """Spark ML PCA fitted on the Training split, k chosen by explained variance."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    started = time.perf_counter()
    settings = settings_of(context)
    fit_settings = (settings.pca_variance, settings.pca_max_k, config.train_split)
    record_source(context, "pca_settings", pca_settings_version(settings.pca_variance, settings.pca_max_k))
    signature = signature_of(context, PCA_VERSION, ("image_features",), *fit_settings)
    if manifest := unchanged_version(context, "pca_model", signature):
        return unchanged_output(manifest)
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
    data_version = signature or digest(PCA_VERSION, model.k, float(model.cumulative_variance), train_rows)
    return versioned_output(model, data_version, signature, metadata)


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
@spark_asset(kinds={"spark", "csv"}, code_version=CSV_VERSION)
def pca_features_csv(context: dg.AssetExecutionContext, image_features, pca_model: PcaModel):
    """One CSV: path, label, split and the k principal components of every valid image."""
    signature = signature_of(context, CSV_VERSION, ("image_features", "pca_model"))
    if manifest := unchanged_version(context, "pca_features_csv", signature):
        return unchanged_output(manifest, {"k": pca_model.k})
    spark_for(context, "pca_features_csv")
    projected = project_frame(image_features, pca_model.spark_model)
    return versioned_output(
        CsvTable(projected, pca_model.k, "pca_features.csv"),
        signature or digest(CSV_VERSION, pca_model.k),
        signature,
        {"columns": 3 + pca_model.k, "k": pca_model.k},
    )


# -- pca_quality ----------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    kinds={"scikitlearn"},
    code_version=EVALUATION_VERSION,
    required_resource_keys={"settings"},
    automation_condition=EAGER,
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
    signature = signature_of(context, EVALUATION_VERSION, ("pca_features_csv",))
    if manifest := unchanged_version(context, "pca_quality", signature):
        accuracy = context.resources.io_manager.load_manifest(manifest)["accuracy"]
        yield unchanged_output(manifest, {"accuracy": round(accuracy, 4)})
        yield accuracy_check(accuracy, floor)
        return
    result = evaluate(pca_features_csv)
    per_class = result.per_class.round(3)
    context.log.info(f"pca_quality: accuracy {result.accuracy:.3f}, macro F1 {result.macro_f1:.3f}")
    yield versioned_output(
        {
            "accuracy": result.accuracy,
            "macro_f1": result.macro_f1,
            "per_class": per_class.to_dict(orient="records"),
            "train_rows": result.train_rows,
            "test_rows": result.test_rows,
        },
        signature or digest(EVALUATION_VERSION, result.accuracy, result.train_rows, result.test_rows),
        signature,
        {
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
    yield accuracy_check(result.accuracy, floor)


def accuracy_check(accuracy: float, floor: float) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name="accuracy_above_floor",
        passed=accuracy >= floor,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"accuracy": round(accuracy, 4), "floor": floor},
    )
