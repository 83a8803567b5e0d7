"""Choosing k, fitting PCA with Spark ML, and the Spark-free form of the fitted model."""

import numpy as np
import pytest

from fruits_assets.errors import FruitsConfigError
from fruits_assets.pca import PcaModel, choose_k, fit_pca, linear_algebra
from fruits_assets.settings import validate_pca_settings


def test_choose_k_is_the_smallest_k_reaching_the_target():
    ratios = np.array([0.5, 0.3, 0.15, 0.05])
    assert choose_k(ratios, 0.5, 10) == (1, False)
    assert choose_k(ratios, 0.8, 10) == (2, False)
    assert choose_k(ratios, 0.95, 10) == (3, False)
    assert choose_k(ratios, 1.0, 10) == (4, False)


def test_choose_k_is_capped_and_says_so():
    assert choose_k(np.array([0.5, 0.3, 0.15, 0.05]), 0.95, 2) == (2, True)


def test_choose_k_tolerates_float_rounding_at_a_target_of_one():
    ratios = np.full(10, 0.1)  # sums to 0.9999999999999999 in floats
    assert choose_k(ratios, 1.0, 50) == (10, False)


@pytest.mark.parametrize("target,max_k", [(0.0, 10), (1.5, 10), (-0.1, 10), (0.9, 0)])
def test_bad_pca_settings_fail_with_a_clear_message(target, max_k):
    with pytest.raises(FruitsConfigError, match="variance target|max k"):
        validate_pca_settings(target, max_k)


def low_rank_data(rows=200, dim=20, rank=3, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim))
    scores = rng.normal(size=(rows, rank)) * np.array([10.0, 5.0, 2.0])[:rank]
    return scores @ basis + rng.normal(scale=0.01, size=(rows, dim)) + 3.0


def fit(spark, data, target, max_k):
    from pyspark.ml.linalg import Vectors

    frame = spark.createDataFrame([(Vectors.dense(row.tolist()),) for row in data], ["features"]).cache()
    return fit_pca(frame, data.shape[1], len(data), target, max_k), frame


def test_spark_pca_matches_numpy_and_projects_the_same_without_spark(spark):
    data = low_rank_data()
    model, frame = fit(spark, data, 0.99, 10)
    assert model.k == 3 and not model.capped
    # Explained-variance ratios equal those of an exact eigendecomposition of the covariance.
    eigenvalues = np.sort(np.linalg.eigvalsh(np.cov(data, rowvar=False)))[::-1]
    np.testing.assert_allclose(model.explained_variance[:3], (eigenvalues / eigenvalues.sum())[:3], atol=1e-8)
    np.testing.assert_allclose(model.mean, data.mean(axis=0), atol=1e-9)
    # The Spark pipeline and the numpy projection give the same scores.
    spark_scores = np.array([r.pca.toArray() for r in model.spark_model.transform(frame).collect()])
    np.testing.assert_allclose(spark_scores, model.project(data), atol=1e-6)
    assert spark_scores.shape == (200, 3)
    assert abs(spark_scores.mean(axis=0)).max() < 1e-6, "scores are centred"


def test_pca_model_round_trips_through_npz_without_spark(spark):
    model, _ = fit(spark, low_rank_data(), 0.9, 5)
    loaded = PcaModel.from_npz_bytes(model.to_npz_bytes())
    assert loaded.spark_model is None
    assert (loaded.k, loaded.variance_target, loaded.max_k, loaded.train_rows) == (model.k, 0.9, 5, 200)
    np.testing.assert_array_equal(loaded.components, model.components)
    new_image = low_rank_data(rows=1, seed=7)
    np.testing.assert_allclose(loaded.project(new_image), model.project(new_image))


def test_components_have_one_sign_convention(spark):
    """An eigenvector's sign is arbitrary; the model's is not: each component's largest loading
    is positive, in the arrays and in the Spark model's scores alike."""
    data = low_rank_data(dim=12)
    model, frame = fit(spark, data, 1.0, 8)  # 3 large components, then 5 of noise
    assert model.k == 8
    largest = model.components[np.abs(model.components).argmax(axis=0), np.arange(model.k)]
    assert (largest > 0).all(), largest
    spark_scores = np.array([r.pca.toArray() for r in model.spark_model.transform(frame).collect()])
    np.testing.assert_allclose(spark_scores, model.project(data), atol=1e-6)


def test_a_model_saved_in_this_process_is_not_loaded_again(spark, tmp_path):
    """pca_features_csv reads the Spark model pca_model saved in the same run: the saved object
    is used (no Spark ML loader); a model saved elsewhere, or by another process, is loaded."""
    from fruits_assets.io_managers import VersionFolder
    from fruits_assets.storage import Storage

    model, frame = fit(spark, low_rank_data(), 0.9, 5)
    folder = VersionFolder(str(tmp_path / "v-1"), Storage(), lambda: spark, str(tmp_path))
    extras, _ = model.save(folder)
    loaded = PcaModel.load(folder, extras)
    assert loaded.spark_model is model.spark_model
    copy = tmp_path / "copy"
    (tmp_path / "v-1").rename(copy)  # the same files, at a path this process never saved
    from_disk = PcaModel.load(VersionFolder(str(copy), Storage(), lambda: spark, str(tmp_path)), extras).spark_model
    assert from_disk is not model.spark_model
    scores = [np.array([r.pca.toArray() for r in m.transform(frame).collect()]) for m in (from_disk, model.spark_model)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-9)


def test_linear_algebra_says_whether_spark_ml_found_a_native_lapack(spark):
    """pca_model's metadata names Spark ML's LAPACK: native exactly where the system has a
    liblapack.so.3 (.ci/run installs OpenBLAS where it can), Java elsewhere."""
    import ctypes.util

    text, native = linear_algebra(spark)
    assert text.startswith("LAPACK ") and ", BLAS " in text
    assert native == (ctypes.util.find_library("lapack") is not None), text
