"""What each input size buys: on a Fruits-360 folder (Training/Test), MobileNetV2 features at each
size -> the project's PCA (fit_pca on Training, variance target 0.95) -> scikit-learn
LogisticRegression trained on Training, scored on Test. Helps a user choose the input size.

Features come from `featurize_batch` in this process (the Spark path gives the same features to
1e-4, see benchmarks/featurize.py); the PCA is the pipeline's own Spark ML fit.

    python -m benchmarks.accuracy --images-root ../shared/fruits360-sample --sizes 96 128 160 224
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED_WEIGHTS, listed_images, machine, spark_session

SHARED_SAMPLE = SHARED_WEIGHTS.parents[1] / "fruits360-sample"


def main(argv=None) -> None:
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from fruits_assets.constants import FEATURE_DIM
    from fruits_assets.featurize import LiteRTFeatures, feature_model, resolve_weights
    from fruits_assets.images import decode_image
    from fruits_assets.pca import fit_pca
    from fruits_assets.spark_jobs import as_vectors
    from fruits_assets.storage import Storage

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-root", default=str(SHARED_SAMPLE))
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 160, 192, 224])
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--variance", type=float, default=0.95)
    args = parser.parse_args(argv)
    listed = listed_images(args.images_root)
    splits = np.array([f.split for f in listed])
    labels = np.array([f.label for f in listed])
    train, test = splits == "Training", splits == "Test"
    spark = spark_session(2)
    rows = []
    for size in args.sizes:
        weights = resolve_weights(args.weights, size, Storage())
        model = LiteRTFeatures(feature_model(weights, size).flatbuffer, threads=2)
        images = np.stack([decode_image(Path(f.path).read_bytes(), size) for f in listed])
        started = time.perf_counter()
        features = model(images)
        seconds = time.perf_counter() - started
        frame = spark.createDataFrame(pd.DataFrame({"features": list(features[train])}), "features array<float>")
        pca = fit_pca(as_vectors(frame).cache(), FEATURE_DIM, int(train.sum()), args.variance, 300)
        classifier = LogisticRegression(max_iter=5000).fit(pca.project(features[train]), labels[train])
        accuracy = classifier.score(pca.project(features[test]), labels[test])
        raw = LogisticRegression(max_iter=5000).fit(features[train], labels[train]).score(features[test], labels[test])
        rows.append((size, pca.k, accuracy, raw, len(listed) / seconds))
        print(rows[-1], flush=True)
    spark.stop()
    print(f"\nmachine: {machine()}; {time.strftime('%Y-%m-%d')}")
    print(
        f"data: {args.images_root}: {int(train.sum())} Training, {int(test.sum())} Test images, "
        f"{len(set(labels))} classes; weights {args.weights}"
    )
    print(
        f"| size | PCA k (variance {args.variance}) | test accuracy (PCA -> LogReg) | test accuracy (1280-d -> LogReg) |"
    )
    print("|---|---|---|---|")
    for size, k, accuracy, raw, _ in rows:
        print(f"| {size} | {k} | {accuracy:.3f} | {raw:.3f} |")


if __name__ == "__main__":
    main()
