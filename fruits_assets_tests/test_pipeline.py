"""The whole asset graph with dg.materialize on real local Spark: outputs, exactness against plain
Keras, meaning of the features on real photos, and re-materialization."""

import csv
import re

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from fruits_assets.constants import FEATURE_DIM
from fruits_assets_tests.helpers import (
    check_results,
    io_manager,
    load,
    materialize,
    metadata_of,
    plain_keras_features,
    run_config,
)


def read_csv(output_root):
    with open(output_root / "pca_features_csv" / "pca_features.csv", newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_all_assets_materialize_on_the_synthetic_sample(materialized_sample, sample_root):
    """The whole graph in one run (the session's materialized sample): every asset, check and
    stored output."""
    _, tmp_path, result = materialized_sample
    assert result.success
    images = 8 * (4 + 2)
    assert metadata_of(result, "raw_images")["images"] == images
    assert metadata_of(result, "preprocessed_images")["rows"] == images
    assert metadata_of(result, "preprocessed_images")["bytes_per_image"] == 96 * 96 * 3
    assert metadata_of(result, "rejected_images")["rows"] == 0
    assert metadata_of(result, "image_features")["weights_meaningful"] is False
    k = metadata_of(result, "pca_model")["k"]
    rows = read_csv(tmp_path)
    assert rows[0] == ["path", "label", "split", *[f"pc_{i}" for i in range(1, k + 1)]]
    assert len(rows) - 1 == images == metadata_of(result, "pca_features_csv")["csv_rows"]
    assert {r[2] for r in rows[1:]} == {"Training", "Test"}
    assert {r[1] for r in rows[1:]} == {p.name for p in (sample_root / "Training").iterdir()}
    features = load(tmp_path, "image_features")
    assert features.count() == images
    assert len(features.first()["features"]) == FEATURE_DIM
    checks = check_results(result)
    for name in ("counts_reconcile", "vectors_complete_and_finite", "csv_matches_features"):
        assert checks[name][0], (name, checks[name])
    counts = checks["counts_reconcile"][2]
    assert {k: counts[k] for k in ("listed", "preprocessed", "rejected")} == {
        "listed": images,
        "preprocessed": images,
        "rejected": 0,
    }
    assert counts["preprocessed_images current version"].endswith("(published: counts_reconcile passed)")
    pca = metadata_of(result, "pca_model")
    assert pca["scree_plot"].startswith("![scree](data:image/png;base64,")
    assert pca["linear_algebra"].startswith("LAPACK ")
    quality = metadata_of(result, "pca_quality")
    assert quality["test_rows"] == 8 * 2 and quality["train_rows"] == 8 * 4
    assert metadata_of(result, "image_features")["rows_per_second"] > 0


def test_spark_features_equal_plain_keras_features(spark, shared_weights, sample_root, tmp_path):
    """Same images, same weights, same decode: Spark's features match single-process Keras."""
    result = materialize(
        tmp_path,
        run_config(sample_root, shared_weights, 224, limit_per_class=1),
        selection=["raw_images", "preprocessed_images", "rejected_images", "image_features"],
    )
    assert result.success
    rows = load(tmp_path, "image_features").orderBy("path").collect()
    assert len(rows) == 16
    spark_features = np.array([r["features"] for r in rows], dtype=np.float32)
    reference = plain_keras_features([r["path"] for r in rows], str(shared_weights), 224)
    assert np.abs(reference).max() > 0.1, "real weights give non-trivial features"
    assert np.abs(spark_features - reference).max() <= 1e-4


@pytest.mark.slow
def test_features_are_meaningful_on_real_photos(spark, shared_weights, shared_sample, tmp_path):
    """Real Fruits-360 photos + real weights: a classifier on the CSV separates the classes."""
    result = materialize(tmp_path, run_config(shared_sample, shared_weights, 96))
    assert result.success
    table = pd.read_csv(tmp_path / "pca_features_csv" / "pca_features.csv")
    assert len(table) == 120
    pcs = [c for c in table.columns if c.startswith("pc_")]
    train, test = table[table.split == "Training"], table[table.split == "Test"]
    classifier = LogisticRegression(max_iter=2000).fit(train[pcs], train.label)
    accuracy = classifier.score(test[pcs], test.label)
    assert accuracy >= 0.9, accuracy
    pca = metadata_of(result, "pca_model")
    assert pca["cumulative_explained_variance"] >= 0.95
    assert pca["train_rows"] == 80, "PCA is fitted on the Training split only"
    # The evaluation asset agrees, and its check passes on real features.
    assert metadata_of(result, "pca_quality")["accuracy"] >= 0.9
    assert check_results(result)["accuracy_above_floor"][0]


def test_rematerializing_replaces_the_previous_output(spark, sample_root, tmp_path):
    """Each materialization is a new version; the current one and the one before it are kept (a
    reader outside any run may still be reading it), older ones are deleted. (Each run lists
    another copy of the images, so that no version includes files of an earlier one: a folder
    whose files a kept version includes is kept, see test_incremental.)"""
    import shutil

    def versions():
        return sorted(p.name for p in (tmp_path / "raw_images").glob("v-*"))

    made = []
    for limit in (1, 2, 3):
        root = shutil.copytree(sample_root, tmp_path / f"images-{limit}")
        assert materialize(tmp_path, run_config(root, limit_per_class=limit), selection=["raw_images"]).success
        made.append((set(versions()) - {v for v in made}).pop())
    assert versions() == sorted(made[1:]), "the oldest version is deleted"
    assert io_manager(tmp_path).current(dg.AssetKey("raw_images"))["version"] == made[-1]
    assert load(tmp_path, "raw_images").count() == 8 * (3 + 2)  # 4 Training + 2 Test per class


def test_a_first_run_converts_the_model_while_the_images_are_read(spark, sample_root, tmp_path):
    """With no converted model in the cache, a run that will featurize starts converting it in
    the background when raw_images starts reading, and image_features takes that model; a run
    that will not featurize converts nothing."""
    cache = tmp_path / "models"
    config = run_config(sample_root, image_size=128, model_cache=str(cache))

    def run(selection):
        instance = dg.DagsterInstance.ephemeral()
        result = materialize(tmp_path / str(len(selection)), config, selection=selection, instance=instance)
        assert result.success
        said = [e.user_message for e in instance.all_logs(result.run_id) if "in the background" in e.user_message]
        return result, said

    _, said = run(["raw_images", "preprocessed_images"])
    assert not said and not cache.exists()
    result, said = run(["raw_images", "preprocessed_images", "image_features"])
    assert said == ["Converting the 128 px LiteRT model in the background, for image_features."]
    assert metadata_of(result, "image_features")["litert_model"].endswith("(converted in this run)")
    assert metadata_of(result, "image_features")["arrays_to_workers"].startswith("read by the Python workers from ")
    assert len(list(cache.iterdir())) == 1


@pytest.mark.slow
def test_long_stages_tell_their_progress_in_the_run_log(spark, tmp_path):
    """A run with several partitions: the run log shows rows done / total, rows/s and an ETA
    while a stage runs, and a line when it ends (what the CLI prints and the UI's run log shows)."""
    from fruits_assets.sample_data import generate_sample

    images = generate_sample(tmp_path / "images", 30, 10)  # 320 images, 16 partitions of 20
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(
        tmp_path / "out",
        run_config(images, image_size=224, rows_per_partition=20),
        selection=["raw_images", "preprocessed_images", "rejected_images", "image_features"],
        instance=instance,
    )
    assert result.success
    messages = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]
    progress = [m for m in messages if m.startswith("image_features: ") and "rows (" in m]
    assert progress, [m for m in messages if "rows" in m]
    assert all("/320 rows" in m and "rows/s" in m for m in progress), progress
    # At least the 16 partitions of 20 rows asked for (the stored files hold at most 20 rows each:
    # a file of fewer rows can be a partition of its own).
    tasks = {int(re.search(r"/(\d+) tasks", m).group(1)) for m in progress}
    assert len(tasks) == 1 and 16 <= tasks.pop() <= 24, progress
    assert any("ETA" in m for m in progress)
    assert any(m.startswith("image_features: done, 320 rows in") for m in messages)


def test_progress_lines_follow_the_tasks(spark):
    """Every 10% of a job's tasks (here 10 slow partitions), from Spark's status tracker."""
    import time as clock

    from fruits_assets.progress import SparkProgress

    def slow(batches):
        for batch in batches:
            clock.sleep(0.4)
            yield batch

    frame = spark.range(0, 100, numPartitions=10).mapInPandas(slow, "id long")
    lines = []
    with SparkProgress(spark, lines.append, "slow", 100, poll=0.05):
        assert frame.count() == 100
    assert len(lines) >= 4, lines
    assert lines[-1].startswith("slow: done, 100 rows in")
    reported = [int(line.split(": ")[1].split("/")[0]) for line in lines[:-1]]
    assert reported == sorted(reported) and reported[0] < 100


def test_an_environment_change_between_two_runs_changes_the_second(spark, sample_root, tmp_path, monkeypatch):
    """Settings are read when a run starts: in one process (as in `dagster dev`), a variable
    changed between two runs changes the second run."""
    counts = []
    for limit in ("1", "2"):
        monkeypatch.setenv("FRUITS_LIMIT_PER_CLASS", limit)
        result = materialize(tmp_path, run_config(sample_root), selection=["raw_images"])
        counts.append(metadata_of(result, "raw_images")["images"])
    assert counts == [8 * 2 * 1, 8 * 2 * 2]
