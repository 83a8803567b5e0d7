"""Each asset's output, from the session's run of the whole graph on the sample (real local Spark,
small data), and assets invoked directly as functions with `build_asset_context` (asset unit
tests)."""

import dagster as dg
import numpy as np
import pytest

from fruits_assets.assets import (
    PcaConfig,
    RawImagesConfig,
    image_features,
    pca_features_csv,
    pca_model,
    preprocessed_images,
    raw_images,
    rejected_images,
)
from fruits_assets.constants import FEATURE_DIM
from fruits_assets.csv_table import CsvTable
from fruits_assets.resources import fruits_resources
from fruits_assets.settings import FruitsSettings
from fruits_assets_tests.helpers import TEST_MASTER, load, metadata_of


def asset_context(**settings):
    resources = fruits_resources(FruitsSettings(spark_master=TEST_MASTER, **settings))
    resources.pop("io_manager")  # direct invocation: outputs come back as values
    return dg.build_asset_context(resources=resources)


@pytest.fixture(scope="module")
def context(spark, tmp_path_factory, sample_root):
    with asset_context(
        output_root=str(tmp_path_factory.mktemp("out")),
        images_root=str(sample_root),
        limit_per_class=2,
        image_size=96,
        model_weights="random",
        pca_variance=0.9,
        pca_max_k=20,
    ) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def stored(_materialized_once):
    """What the session's run of the whole graph stored (as a downstream asset reads it), and
    its metadata."""
    _, out, result = _materialized_once
    values = {asset: load(out, asset) for asset in ASSETS}
    return {**values, "metadata": {asset: metadata_of(result, asset) for asset in ASSETS}}


ASSETS = ("raw_images", "preprocessed_images", "rejected_images", "image_features", "pca_model", "pca_features_csv")
IMAGES = 8 * (4 + 2)


def test_raw_images_lists_paths_labels_splits_and_bytes(stored):
    rows = stored["raw_images"].collect()
    assert len(rows) == IMAGES == stored["metadata"]["raw_images"]["images"]
    assert {r.split for r in rows} == {"Training", "Test"}
    assert all(r.content and len(r.content) == r.size and r.reason is None for r in rows)
    assert "Apple Red 1" in stored["metadata"]["raw_images"]["images_per_class"]
    assert stored["metadata"]["raw_images"]["thumbnails"].startswith("![one image per class](data:image/png;base64,")


def test_the_stages_invoked_directly_as_functions(context):
    """Asset unit tests: each stage called as a function on the previous one's value (no IO
    manager: nothing reused, everything computed), with the limit per class of this context."""
    [raw] = raw_images(context, RawImagesConfig())
    assert raw.value.count() == 8 * 2 * 2 == raw.metadata["images"].value
    assert raw.metadata["skipped_by_limit"].value == 8 * (2 + 0)
    preprocessed = preprocessed_images(context, raw.value)
    assert preprocessed.metadata["computed"].value == 32 and preprocessed.data_version is not None
    assert rejected_images(context, raw.value).value.count() == 0
    features = image_features(context, preprocessed.value)
    vectors = np.array([r.features for r in features.value.collect()])
    assert vectors.shape == (32, FEATURE_DIM) and np.isfinite(vectors).all()


def test_preprocessed_images_are_uint8_arrays_of_the_model_size(stored):
    frame = stored["preprocessed_images"]
    row = frame.first()
    assert len(row.image) == 96 * 96 * 3 and row.image_size == 96
    assert frame.count() == IMAGES
    assert stored["rejected_images"].count() == 0


def test_image_features_are_1280_finite_floats(stored):
    vectors = np.array([r.features for r in stored["image_features"].collect()])
    assert vectors.shape == (IMAGES, FEATURE_DIM) and np.isfinite(vectors).all()
    assert stored["metadata"]["image_features"]["weights"] == "random"


def test_pca_model_and_csv_invoked_directly_on_stored_features(context, stored):
    """Asset unit tests on the stored features: PCA is fitted on the Training rows only, k within
    max_k (this context's 20), and the CSV projects every row with k components."""
    model = pca_model(context, PcaConfig(), stored["image_features"]).value
    assert model.train_rows == 8 * 4
    assert 1 <= model.k <= 20
    assert model.components.shape == (FEATURE_DIM, model.k)
    table = pca_features_csv(context, stored["image_features"], model).value
    assert isinstance(table, CsvTable) and table.k == model.k
    rows = table.frame.collect()
    assert len(rows) == IMAGES and all(len(r.pcs) == table.k for r in rows)


def test_stored_csv_has_every_row(stored):
    table = stored["pca_features_csv"]
    assert len(table) == IMAGES and len(table.columns) == 3 + stored["pca_model"].k


def test_bad_settings_fail_with_one_clear_message(context, stored, tmp_path):
    with (
        asset_context(output_root=str(tmp_path), images_root=str(tmp_path / "missing")) as bad,
        pytest.raises(dg.Failure, match="does not exist or is empty"),
    ):
        list(raw_images(bad, RawImagesConfig()))
    for settings, message in (
        ({"image_size": 100}, "not supported"),
        ({"pca_variance": 1.5}, "variance target"),
        ({"pca_max_k": 0}, "max k"),
    ):
        with asset_context(output_root=str(tmp_path), **settings) as bad, pytest.raises(dg.Failure, match=message):
            pca_model(bad, PcaConfig(), stored["image_features"])
    with pytest.raises(dg.Failure, match="No valid image in the 'Training' split"):
        pca_model(context, PcaConfig(), stored["image_features"].where("split = 'Test'"))


def test_a_vector_that_is_not_1280_finite_numbers_is_bad(spark):
    """The vectors check's test of one vector: missing, short, a null, NaN or an infinity."""
    from fruits_assets.checks import bad_vector

    good = [0.5] * FEATURE_DIM
    cases = {
        "good": (good, False),
        "negative and zero": ([-3.0, 0.0] * (FEATURE_DIM // 2), False),
        "nan": ([float("nan"), *good[1:]], True),
        "nan last": ([*good[1:], float("nan")], True),
        "inf": ([*good[1:], float("inf")], True),
        "-inf": ([float("-inf"), *good[1:]], True),
        "a null": ([None, *good[1:]], True),
        "short": (good[1:], True),
        "empty": ([], True),
        "missing": (None, True),
    }
    frame = spark.createDataFrame([(name, v) for name, (v, _) in cases.items()], "name string, features array<float>")
    got = {r["name"]: r["bad"] for r in frame.select("name", bad_vector().alias("bad")).collect()}
    assert got == {name: bad for name, (_, bad) in cases.items()}


def test_the_csv_is_one_stream_ordered_by_split_label_and_path(spark, tmp_path):
    import random

    import pandas as pd

    from fruits_assets.csv_table import write_csv

    rows = [
        (f"/r/{s}/{c}/{i}.jpg", c, s, [float(i), -0.5]) for s in ("Test", "Training") for c in "BA" for i in range(30)
    ]
    random.Random(3).shuffle(rows)
    frame = spark.createDataFrame(rows, "path string, label string, split string, pcs array<double>").repartition(5)
    assert write_csv(frame, 2, str(tmp_path / "t.csv")) == len(rows)
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table.columns) == ["path", "label", "split", "pc_1", "pc_2"]
    expected = sorted(rows, key=lambda r: (r[2], r[1], r[0]))
    assert list(zip(table.split, table.label, table.path, table.pc_1, strict=True)) == [
        (s, c, p, v[0]) for p, c, s, v in expected
    ]
