"""Resolving MobileNetV2 weights, converting the Keras model to LiteRT, and featurizing batches,
without Spark; a worker process featurizes without importing TensorFlow."""

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from fruits_assets.constants import FEATURE_DIM
from fruits_assets.errors import FruitsConfigError
from fruits_assets.featurize import LiteRTFeatures, feature_model, load_model, resolve_weights
from fruits_assets.storage import Storage

pytestmark = pytest.mark.spark  # TensorFlow


def test_random_weights_are_seeded_and_flagged_as_not_meaningful():
    """The same weights every time (so their identity can name them without making them), one
    identity per size, and flagged as meaningless."""
    from fruits_assets.featurize import random_model

    first, second = random_model(96).get_weights(), random_model(96).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    weights = resolve_weights("random", 96, Storage())
    assert weights.sha256 == resolve_weights("random", 96, Storage()).sha256
    assert weights.sha256 != resolve_weights("random", 128, Storage()).sha256
    assert not weights.meaningful


def test_imagenet_offline_gives_one_clear_error():
    """Named without a download (its Keras file name), converted with Keras' weights: offline
    and without Keras' cache, one clear error saying what to do."""
    weights = resolve_weights("imagenet", 96, Storage())
    assert weights.sha256 != resolve_weights("imagenet", 128, Storage()).sha256
    try:
        feature_model(weights, 96)
    except FruitsConfigError as error:
        message = str(error)
        assert "FRUITS_MODEL_WEIGHTS" in message and "random" in message
    else:
        pytest.skip("this machine could get Keras' ImageNet weights: not offline")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FruitsConfigError, match="Cannot read the weights file"):
        resolve_weights(str(tmp_path / "nope.weights.h5"), 96, Storage())


def test_unreadable_weights_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_text("not hdf5")
    with pytest.raises(FruitsConfigError, match="not usable MobileNetV2"):
        feature_model(resolve_weights(str(bad), 96, Storage()), 96)


def test_real_weights_file_is_identified_by_its_sha256(shared_weights):
    weights = resolve_weights(str(shared_weights), 96, Storage())
    assert weights.sha256 == hashlib.sha256(shared_weights.read_bytes()).hexdigest()
    assert weights.meaningful


def test_litert_features_equal_keras_in_any_batch_size(shared_weights):
    """The converted model gives Keras' features (<= 1e-4) whatever the batch size."""
    weights = resolve_weights(str(shared_weights), 96, Storage())
    model = feature_model(weights, 96)
    assert not model.from_cache and model.max_abs_diff <= 1e-4
    images = np.random.default_rng(0).integers(0, 255, (5, 96, 96, 3), dtype=np.uint8)
    features = LiteRTFeatures(model.flatbuffer)
    whole, pieces = features(images, batch_size=64), features(images, batch_size=2)
    assert whole.shape == (5, FEATURE_DIM) and whole.dtype == np.float32
    assert np.isfinite(whole).all() and whole.max() > 0.01
    np.testing.assert_array_equal(whole, pieces)
    keras_features = load_model(weights, 96).predict(images.astype(np.float32) / 127.5 - 1.0, verbose=0)
    assert np.abs(whole - keras_features).max() <= 1e-4
    assert features(images[:0]).shape == (0, FEATURE_DIM)


def test_the_converted_model_is_cached_by_content(tmp_path):
    weights, storage = resolve_weights("random", 96, Storage()), Storage()
    first = feature_model(weights, 96, storage, str(tmp_path / "_models"))
    again = feature_model(weights, 96, storage, str(tmp_path / "_models"))
    assert not first.from_cache and again.from_cache and again.flatbuffer == first.flatbuffer
    assert [p.name for p in (tmp_path / "_models").iterdir()] == [f"{first.key}.tflite"]
    assert (
        feature_model(resolve_weights("random", 128, Storage()), 128, storage, str(tmp_path / "_models")).key
        != first.key
    )


def test_a_conversion_started_ahead_is_the_one_feature_model_returns(tmp_path):
    """`convert_ahead` converts in the background once; `feature_model` takes that model (not
    the cache file it wrote, not a second conversion); once cached, nothing starts ahead."""
    from fruits_assets import featurize

    weights, storage, cache = resolve_weights("random", 96, Storage()), Storage(), str(tmp_path / "_models")
    assert featurize.convert_ahead(weights, 96, storage, cache)
    assert not featurize.convert_ahead(weights, 96, storage, cache)  # already converting
    [ahead] = featurize._AHEAD.values()
    converted = ahead.result(timeout=300)  # done, and cached: the cache alone would say from_cache
    assert (tmp_path / "_models" / f"{converted.key}.tflite").exists()
    model = feature_model(weights, 96, storage, cache)
    assert model is converted and not model.from_cache and model.max_abs_diff <= 1e-4
    assert not featurize._AHEAD
    assert not featurize.convert_ahead(weights, 96, storage, cache)  # cached
    assert feature_model(weights, 96, storage, cache).from_cache


def test_a_conversion_started_ahead_runs_in_a_child_process(tmp_path):
    """The conversion ahead runs in another process: the run's own process (here, a program as
    `dagster asset materialize` would be) gets the model without ever importing TensorFlow or
    Keras, whose import holds its GIL for seconds and stays in its memory (~1 GB)."""
    code = (
        "import sys\n"
        "from fruits_assets.featurize import convert_ahead, feature_model, resolve_weights\n"
        "from fruits_assets.storage import Storage\n"
        "weights, storage = resolve_weights('random', 96, Storage()), Storage()\n"
        f"assert convert_ahead(weights, 96, storage, {str(tmp_path)!r})\n"
        f"model = feature_model(weights, 96, storage, {str(tmp_path)!r})\n"
        "assert not model.from_cache and model.max_abs_diff <= 1e-4, model\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", result.stdout
    assert len(list(tmp_path.glob("*.tflite"))) == 1


def test_a_conversion_started_ahead_raises_its_error_where_the_model_is_needed(tmp_path):
    """Weights that are not MobileNetV2's: the background conversion fails quietly, and the step
    that needs the model raises the usual clear error (then the next attempt converts anew)."""
    from fruits_assets import featurize

    bad = tmp_path / "bad.weights.h5"
    bad.write_text("not hdf5")
    weights, storage, cache = resolve_weights(str(bad), 96, Storage()), Storage(), str(tmp_path / "_models")
    assert featurize.convert_ahead(weights, 96, storage, cache)
    for _attempt in range(2):
        with pytest.raises(FruitsConfigError, match="not usable MobileNetV2"):
            feature_model(weights, 96, storage, cache)
    assert not featurize._AHEAD and not (tmp_path / "_models").exists()


def test_a_worker_featurizes_without_tensorflow(tmp_path):
    """What a Spark Python worker does: build the interpreter from the flatbuffer bytes and run
    it, in a process that never imports TensorFlow."""
    model = feature_model(resolve_weights("random", 96, Storage()), 96)
    (tmp_path / "model.tflite").write_bytes(model.flatbuffer)
    code = (
        "import sys, numpy as np\n"
        "from fruits_assets.featurize import LiteRTFeatures\n"
        f"features = LiteRTFeatures(open({str(tmp_path / 'model.tflite')!r}, 'rb').read())\n"
        "out = features(np.zeros((3, 96, 96, 3), np.uint8))\n"
        "assert out.shape == (3, 1280) and np.isfinite(out).all()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'dagster')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout
