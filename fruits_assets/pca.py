"""PCA: choosing k, fitting with Spark ML in one pass, and a Spark-free form of the fitted model.

The Spark model is a `PipelineModel` of [centering StandardScaler, PCA(k_fit), VectorSlicer(0..k-1),
ElementwiseProduct(signs)]: one fit at k_fit = min(max_k, dim) gives every explained-variance ratio
needed to choose k, the slicer keeps the first k components without a second fit, and the signs
make each component's largest loading positive. An eigenvector's sign is arbitrary: without that
convention, two fits on the same features (another partitioning, another machine) can give
components of opposite signs, and CSVs that disagree. The same projection without Spark is
`(x - mean) @ components` (see `PcaModel.project`), so an app backend can project a new image
with numpy alone.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from fruits_assets.errors import FruitsConfigError

# Changing how the model is fitted or chosen changes this (pca_model's code version).
PCA_VERSION = "spark-ml-centered-pca-signs-v1"


def choose_k(explained_variance: np.ndarray, target: float, max_k: int) -> tuple[int, bool]:
    """Smallest k whose cumulative explained-variance ratio reaches `target`, capped at `max_k`.

    Returns (k, capped): capped is True when even k = max_k (or all components) misses the target.
    """
    ratios = np.asarray(explained_variance, dtype=np.float64)
    if ratios.size == 0:
        raise FruitsConfigError("PCA has no components: no training features?")
    cumulative = np.cumsum(ratios)
    limit = min(max_k, ratios.size)
    # A tolerance: ratios that sum to 1.0 in exact arithmetic may sum to 0.9999999999 in floats.
    reached = np.nonzero(cumulative[:limit] >= target - 1e-9)[0]
    if reached.size:
        return int(reached[0]) + 1, False
    return limit, True


@dataclass
class PcaModel:
    """The fitted PCA as plain arrays (usable without Spark), plus the Spark model when in memory."""

    components: np.ndarray  # (dim, k)
    mean: np.ndarray  # (dim,)
    explained_variance: np.ndarray  # (k_fit,) ratios of total variance, from the one fit
    variance_target: float
    max_k: int
    train_rows: int
    # A pyspark.ml.PipelineModel, a function that loads it on first use, or None.
    spark: object = field(default=None, repr=False)

    @property
    def spark_model(self):
        """The Spark form of the model (loaded on first use when stored)."""
        if callable(self.spark):
            self.spark = self.spark()
        return self.spark

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    @property
    def cumulative_variance(self) -> float:
        return float(np.sum(self.explained_variance[: self.k]))

    @property
    def capped(self) -> bool:
        return self.cumulative_variance < self.variance_target - 1e-9

    def project(self, features: np.ndarray) -> np.ndarray:
        """(n, dim) features -> (n, k) principal-component scores, exactly as the Spark model."""
        return (np.asarray(features, dtype=np.float64) - self.mean) @ self.components

    # Spark-free storage: one .npz with the arrays and a JSON header of scalars.
    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        header = {
            "variance_target": self.variance_target,
            "max_k": self.max_k,
            "train_rows": self.train_rows,
            "k": self.k,
        }
        np.savez(
            buffer,
            components=self.components,
            mean=self.mean,
            explained_variance=self.explained_variance,
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        )
        return buffer.getvalue()

    # -- its stored form (used by the IO manager) ---------------------------------------------
    NPZ = "pca_model.npz"
    SPARK_MODEL = "spark_model"

    def save(self, folder) -> tuple[dict, dict]:
        """The arrays as pca_model.npz (numpy alone reads them) and, when there is one, the Spark
        `PipelineModel` in spark_model/."""
        folder.write_bytes(self.NPZ, self.to_npz_bytes())
        if self.spark_model is not None:
            folder.save_spark(self.spark_model, self.SPARK_MODEL)
        return {"spark_model": self.spark_model is not None}, {}

    @classmethod
    def load(cls, folder, manifest: dict) -> PcaModel:
        """The arrays at once; the Spark model on first use only, so a check that reads k on the
        Dagster host needs no Spark (nor, on EMR, an S3 file system for Spark)."""
        spark_model = None
        if manifest.get("spark_model", True):

            def spark_model():
                from pyspark.ml import PipelineModel

                return folder.load_spark(PipelineModel, cls.SPARK_MODEL)

        return cls.from_npz_bytes(folder.read_bytes(cls.NPZ), spark_model=spark_model)

    @classmethod
    def from_npz_bytes(cls, data: bytes, spark_model=None) -> PcaModel:
        with np.load(io.BytesIO(data)) as arrays:
            header = json.loads(arrays["header"].tobytes().decode())
            return cls(
                components=arrays["components"],
                mean=arrays["mean"],
                explained_variance=arrays["explained_variance"],
                variance_target=header["variance_target"],
                max_k=header["max_k"],
                train_rows=header["train_rows"],
                spark=spark_model,
            )


def fit_pca(train_vectors, dim: int, train_rows: int, variance_target: float, max_k: int) -> PcaModel:
    """Fit on a DataFrame with a `features` Vector column (cached by the caller: one pass)."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import PCA, ElementwiseProduct, StandardScaler, VectorSlicer
    from pyspark.ml.linalg import Vectors

    k_fit = min(max_k, dim)
    fitted = Pipeline(
        stages=[
            StandardScaler(inputCol="features", outputCol="centered", withMean=True, withStd=False),
            PCA(k=k_fit, inputCol="centered", outputCol="pca_full"),
        ]
    ).fit(train_vectors)
    scaler, pca = fitted.stages
    explained = np.asarray(pca.explainedVariance.toArray())
    k, _capped = choose_k(explained, variance_target, max_k)
    slicer = VectorSlicer(inputCol="pca_full", outputCol="pca_first_k", indices=list(range(k)))
    first_k = np.asarray(pca.pc.toArray())[:, :k]  # pc crosses from the JVM once (~0.3-0.7 s each time)
    signs = component_signs(first_k)
    flip = ElementwiseProduct(inputCol="pca_first_k", outputCol="pca", scalingVec=Vectors.dense(signs))
    components = first_k * signs
    return PcaModel(
        components=components,
        mean=np.asarray(scaler.mean.toArray()),
        explained_variance=explained,
        variance_target=variance_target,
        max_k=max_k,
        train_rows=train_rows,
        spark=PipelineModel(stages=[scaler, pca, slicer, flip]),
    )


def linear_algebra(spark) -> tuple[str, bool]:
    """Which LAPACK and BLAS Spark ML uses in this session's JVM, and whether LAPACK is native.

    dev.ludovic.netlib (Spark's linear algebra) loads a native library when the system has one
    (`liblapack.so.3`, `libblas.so.3`, e.g. OpenBLAS), else it falls back to Java, with only a
    WARN line in Spark's log. The fit's SVD of the dim x dim covariance is LAPACK's: on this
    repository's 2-core machine, pca_model on 6,300 vectors took 31.6 s in Java, 16.0 s with
    OpenBLAS (README, Requirements)."""
    jvm = spark.sparkContext._jvm
    lapack = jvm.dev.ludovic.netlib.lapack.LAPACK.getInstance().getClass().getSimpleName()
    blas = jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getSimpleName()
    native = lapack.startswith("JNI")  # JNILAPACK: the native library; F2jLAPACK, JavaLAPACK: Java
    where = "native" if native else "Java: no native liblapack.so.3 found"
    return f"LAPACK {lapack}, BLAS {blas} ({where})", native


def component_signs(components: np.ndarray) -> np.ndarray:
    """+1 or -1 per column: the sign that makes the column's largest-magnitude entry positive."""
    largest = components[np.abs(components).argmax(axis=0), np.arange(components.shape[1])]
    return np.where(largest < 0, -1.0, 1.0)
