"""Resolving MobileNetV2 weights and featurizing batches in one process, without Spark."""

import hashlib

import numpy as np
import pytest

from fruits_assets.featurize import featurize_batch, load_model, resolve_weights
from fruits_assets.errors import FruitsConfigError
from fruits_assets.settings import FEATURE_DIM
from fruits_assets.storage import Storage


def test_random_weights_are_seeded_and_flagged_as_not_meaningful():
    first = resolve_weights("random", 96, Storage())
    second = resolve_weights("random", 96, Storage())
    assert first.sha256 == second.sha256
    assert not first.meaningful


def test_imagenet_offline_gives_one_clear_error():
    try:
        weights = resolve_weights("imagenet", 96, Storage())
    except FruitsConfigError as error:
        message = str(error)
        assert "FRUITS_MODEL_WEIGHTS" in message and "random" in message
    else:
        pytest.skip(f"this machine could get ImageNet weights ({weights.identity}): not offline")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FruitsConfigError, match="Cannot read the weights file"):
        resolve_weights(str(tmp_path / "nope.weights.h5"), 96, Storage())


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_text("not hdf5")
    with pytest.raises(FruitsConfigError, match="not usable MobileNetV2"):
        resolve_weights(str(bad), 96, Storage())


def test_real_weights_file_is_identified_by_its_sha256(shared_weights):
    weights = resolve_weights(str(shared_weights), 96, Storage())
    assert weights.sha256 == hashlib.sha256(shared_weights.read_bytes()).hexdigest()
    assert weights.meaningful


def test_featurize_batch_gives_1280_finite_values_per_image_in_any_batch_size(shared_weights):
    weights = resolve_weights(str(shared_weights), 96, Storage())
    model = load_model(weights, 96)
    images = np.random.default_rng(0).integers(0, 255, (5, 96, 96, 3), dtype=np.uint8)
    whole = featurize_batch(model, images, batch_size=64)
    pieces = featurize_batch(model, images, batch_size=2)
    assert whole.shape == (5, FEATURE_DIM) and whole.dtype == np.float32
    assert np.isfinite(whole).all() and whole.max() > 0.01
    np.testing.assert_allclose(whole, pieces, atol=1e-4)
    assert featurize_batch(model, images[:0]).shape == (0, FEATURE_DIM)
