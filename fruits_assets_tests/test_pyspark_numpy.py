"""PySpark 3.5 with numpy 2: the exact PySpark paths `fruits_assets` uses, under numpy 2.x.

PySpark 3.5 declares `numpy>=1.15,<2` for its `ml`, `mllib`, `sql`, `pandas-on-spark` and
`connect` extras (pyspark 3.5.x's setup.py). Neither the cluster (EMR's own pyspark 3.5.5, beside
the lock's numpy 2.4.6) nor this project (pyspark from PyPI without extras) installs an extra, so
nothing enforces it: the combination is unsupported upstream, not refused. Some of PySpark 3.5
does break under numpy 2.4 - `SparseVector.dot` (np.in1d, removed), `TypeConverters` on numpy
string scalars (np.unicode_, np.string_), pandas-on-Spark's type hints (np.float_) - and none of
it is used here (test_emr_bootstrap.py checks the imports). This test runs, on local Spark, what
is used: Arrow-based createDataFrame/toPandas of arrays, mapInPandas with binary in and float
arrays out, array_to_vector/vector_to_array, the PCA pipeline (StandardScaler, PCA, VectorSlicer,
ElementwiseProduct with a numpy scaling vector), DenseVector/DenseMatrix to numpy, and
PipelineModel save/load. It runs pyspark 3.5.x from PyPI (pyproject: >=3.5.5,<3.6); the cluster's
3.5.5 is the same minor release line.
"""

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.spark


def test_the_pyspark_paths_fruits_uses_run_under_numpy_2(spark, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import PCA, ElementwiseProduct, StandardScaler, VectorSlicer
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    assert int(np.__version__.split(".")[0]) >= 2, f"this test is about numpy 2, not {np.__version__}"
    rows = np.random.default_rng(7).normal(size=(60, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])

    # Arrow: pandas -> Spark with a binary column (the photos), like the listing and decoding steps.
    images = spark.createDataFrame(
        pd.DataFrame({"id": np.arange(60, dtype=np.int64), "content": [r.astype(np.float32).tobytes() for r in rows]})
    )

    # mapInPandas: bytes in, float32 arrays out (featurize.py's shape of batch).
    def featurize(batches):
        for batch in batches:
            vectors = [np.frombuffer(b, dtype=np.float32).astype(np.float64) for b in batch["content"]]
            yield pd.DataFrame({"id": batch["id"], "features": vectors})

    schema = T.StructType([T.StructField("id", T.LongType()), T.StructField("features", T.ArrayType(T.DoubleType()))])
    featured = images.mapInPandas(featurize, schema).withColumn("features", array_to_vector("features"))

    # pca.py's pipeline, with a numpy scaling vector, fitted, saved and loaded.
    fitted = Pipeline(
        stages=[
            StandardScaler(inputCol="features", outputCol="centered", withMean=True, withStd=False),
            PCA(k=5, inputCol="centered", outputCol="pca_full"),
        ]
    ).fit(featured)
    scaler, pca = fitted.stages
    explained = np.asarray(pca.explainedVariance.toArray())
    components = np.asarray(pca.pc.toArray())[:, :3]
    signs = np.where(components[np.abs(components).argmax(axis=0), np.arange(3)] < 0, -1.0, 1.0)
    model = PipelineModel(
        stages=[
            scaler,
            pca,
            VectorSlicer(inputCol="pca_full", outputCol="pca_first_k", indices=[0, 1, 2]),
            ElementwiseProduct(inputCol="pca_first_k", outputCol="pca", scalingVec=Vectors.dense(signs)),
        ]
    )
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))

    projected = (
        loaded.transform(featured).select("id", vector_to_array("pca").alias("pca")).orderBy(F.col("id")).toPandas()
    )
    got = np.stack(projected["pca"].to_numpy())
    mean = np.asarray(scaler.mean.toArray())
    expected = (rows.astype(np.float32).astype(np.float64) - mean) @ (components * signs)
    assert np.allclose(got, expected, atol=1e-6)
    assert explained.shape == (5,) and np.all(np.diff(explained) <= 1e-12) and explained[0] > 0.5
    assert np.allclose(mean, rows.astype(np.float32).astype(np.float64).mean(axis=0))
