"""MobileNetV2 features: resolving the weights once on the driver, building the model once per
Python worker, and featurizing batches of stored uint8 images.

The weights travel as bytes (a Spark broadcast, see `spark_jobs.featurize_frame`), so workers never
download anything, and every worker computes with exactly the weights the driver checked.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
import tempfile
from dataclasses import dataclass

import numpy as np

from fruits_assets.errors import FruitsConfigError
from fruits_assets.settings import FEATURE_DIM

RANDOM_SEED = 1360  # `random` weights are seeded: the same "features" on every run and worker


@dataclass(frozen=True)
class Weights:
    """A resolved weights file: what it is (for metadata) and its bytes (for the workers)."""

    spec: str  # what the user asked for: imagenet | random | a path | an s3:// URI
    sha256: str
    suffix: str  # ".weights.h5" (Keras 3) or ".h5" (legacy Keras); decides the loader
    data: bytes

    @property
    def meaningful(self) -> bool:
        return self.spec != "random"

    @property
    def identity(self) -> str:
        return f"{self.spec} sha256:{self.sha256[:16]}"


def build_model(image_size: int):
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3),
        alpha=1.0,
        include_top=False,
        weights=None,
        pooling="avg",
    )


@functools.lru_cache(maxsize=8)
def random_weights(image_size: int) -> Weights:
    """The `random` weights of this size (made once per process: the same every time)."""
    return _weights_from_model("random", random_model(image_size))


def random_model(image_size: int):
    """Seeded random MobileNetV2 weights for smoke tests, with healthy activations.

    Keras' initial weights (unit batch-norm statistics) shrink the activations layer after layer:
    the features come out ~1e-11, a regime where Spark's PCA (an SVD of a ~1e-22 covariance) may
    fail to converge. Each batch normalization's moving statistics are set, in order, to those of
    its input on a seeded probe batch, so the features are O(1). Deterministic: same seed, same
    probe, same weights.
    """
    import keras

    keras.utils.set_random_seed(RANDOM_SEED)
    model = build_model(image_size)
    probe = np.random.default_rng(RANDOM_SEED).uniform(-1, 1, (16, image_size, image_size, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            inputs = np.asarray(keras.Model(model.input, layer.input)(probe, training=False))
            gamma, beta, _mean, _variance = layer.get_weights()
            layer.set_weights([gamma, beta, inputs.mean(axis=(0, 1, 2)), inputs.var(axis=(0, 1, 2)) + 1e-3])
    return model


def _weights_suffix(name: str) -> str:
    return ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1] or ".h5"


def _saved_weights(model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.weights.h5")
        model.save_weights(path)
        with open(path, "rb") as handle:
            return handle.read()


def _weights_from_bytes(spec: str, data: bytes, suffix: str) -> Weights:
    return Weights(spec=spec, sha256=hashlib.sha256(data).hexdigest(), suffix=suffix, data=data)


def _weights_from_model(spec: str, model) -> Weights:
    """Weights of an in-memory model; identified by the arrays, as saved files carry timestamps."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return Weights(spec=spec, sha256=digest.hexdigest(), suffix=".weights.h5", data=_saved_weights(model))


def resolve_weights(spec: str, image_size: int, storage) -> Weights:
    """`imagenet` | `random` | local path | `s3://` URI -> checked weights bytes, or one clear error."""
    spec = spec.strip()
    if spec == "imagenet":
        import keras

        try:
            model = keras.applications.MobileNetV2(
                input_shape=(image_size, image_size, 3), include_top=False, weights="imagenet",
                pooling="avg",
            )
        except Exception as error:
            raise FruitsConfigError(
                "Cannot get Keras' ImageNet MobileNetV2 weights (no internet, or no Keras cache in "
                f"~/.keras/models): {error}. Provide a weights file instead: set "
                "FRUITS_MODEL_WEIGHTS (or the image_features `weights` config) to a local path or "
                "s3:// URI of a Keras MobileNetV2 (include_top=False) weights file, or to `random` "
                "for a smoke test whose features mean nothing."
            ) from None
        return _weights_from_model(spec, model)
    if spec == "random":
        return random_weights(image_size)
    try:
        data = storage.read_bytes(spec)
    except Exception as error:
        raise FruitsConfigError(
            f"Cannot read the weights file {spec!r}: {type(error).__name__}: {error}. "
            "FRUITS_MODEL_WEIGHTS must be `imagenet`, `random`, or a readable path/s3:// URI."
        ) from None
    weights = _weights_from_bytes(spec, data, _weights_suffix(spec))
    try:  # check on the driver, so a bad file fails here and not in every worker
        load_model(weights, image_size)
    except Exception as error:
        raise FruitsConfigError(
            f"The weights file {spec!r} is not usable MobileNetV2 (alpha=1.0, include_top=False) "
            f"weights: {type(error).__name__}: {str(error)[:300]}"
        ) from None
    return weights


def load_model(weights: Weights, image_size: int):
    model = build_model(image_size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights" + weights.suffix)
        with open(path, "wb") as handle:
            handle.write(weights.data)
        model.load_weights(path)
    return model


# -- per Python worker ----------------------------------------------------------------------------
_MODELS: dict[tuple, object] = {}
# Models this process built (tests and benchmarks read it): "count" = all, (sha256, size) = that one.
MODEL_BUILDS: Counter = Counter()


def configure_tensorflow_threads(threads: int) -> None:
    """Give TensorFlow this task's cores only, so concurrent Spark tasks do not oversubscribe.

    inter-op = 1: MobileNetV2 is a chain of layers, there is nothing to run side by side, and a
    second pool would only compete with the other Spark task's TensorFlow for the same cores.
    """
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process: keep its settings


@dataclass
class FeatureModel:
    """A built model and its compiled forward pass: uint8 images in, float32 features out."""

    model: object  # the keras.Model (tests compare with it)
    forward: object  # tf.function: uint8 (n, s, s, 3) -> float32 (n, 1280)
    image_size: int


def compile_forward(model, image_size: int):
    """One traced graph for any batch length: `preprocess_input` scaling (x / 127.5 - 1, as
    Keras' MobileNetV2 does it), then the model in inference mode. A fixed signature with a free
    batch dimension means the short last batch of a partition does not trigger a retrace, and
    uint8 goes to TensorFlow as is (4x less copying than float32 made in numpy)."""
    import tensorflow as tf

    @tf.function(
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
        reduce_retracing=True,
    )
    def forward(images):
        scaled = tf.cast(images, tf.float32) / 127.5 - 1.0
        return model(scaled, training=False)

    return forward


def cached_model(sha256: str, image_size: int, threads: int, get_weights) -> FeatureModel:
    """The model for these weights and size, built at most once per Python process."""
    key = (sha256, image_size)
    if key not in _MODELS:
        configure_tensorflow_threads(threads)
        model = load_model(get_weights(), image_size)
        _MODELS[key] = FeatureModel(model, compile_forward(model, image_size), image_size)
        MODEL_BUILDS["count"] += 1
        MODEL_BUILDS[key] += 1
    return _MODELS[key]


def featurize_batch(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 (n, s, s, 3) -> float32 (n, 1280): Keras `preprocess_input` scaling, then the model.

    `model` is a `FeatureModel` (from `cached_model`) or a plain keras.Model.
    """
    if len(images) == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    if not isinstance(model, FeatureModel):
        model = FeatureModel(model, compile_forward(model, images.shape[1]), images.shape[1])
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = np.ascontiguousarray(images[start : start + batch_size])
        out[start : start + len(chunk)] = model.forward(chunk).numpy()
    return out
