"""Two runs at once, and write-audit-publish, with the real CLI and real Spark.

- Two `dagster asset materialize -m fruits_assets.definitions --select '*'` processes started two
  seconds apart on the same DAGSTER_HOME and output folder (what two people clicking
  "Materialize all" do from the CLI, which bypasses Dagster's run queue), the second with another
  input size so that it has work to do after the first: the second waits for the first (the
  assets root's writer lock), then runs; both succeed with complete outputs, each current
  version comes from the last run that computed it, and nothing either run wrote was deleted.
- A blocking check that fails: the failing version is not current afterwards, the previous one
  is, and another run's downstream assets read the previous one.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from fruits_assets_tests.helpers import check_results, io_manager, materialize, metadata_of, run_config

PROJECT = Path(__file__).resolve().parents[1]
ASSETS = [
    "raw_images",
    "preprocessed_images",
    "rejected_images",
    "image_features",
    "pca_model",
    "pca_features_csv",
    "pca_quality",
]


def cli_env(home: Path, out: Path, images: Path) -> dict:
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FRUITS_OUTPUT_ROOT": str(out),
        "FRUITS_IMAGES_ROOT": str(images),
        "FRUITS_IMAGE_SIZE": "96",
        "FRUITS_MODEL_WEIGHTS": "random",
        "FRUITS_SPARK_MASTER": "local[2]",
    }


def materializations(instance: dg.DagsterInstance, run_id: str) -> dict:
    """{asset: metadata} of a run's materializations, from the instance's event log."""
    found = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.dagster_event.event_specific_data.materialization
        found[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    return found


def step_times(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """When a run's first step started and its last step ended (its writing window)."""
    kinds = (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE)
    times = [e.timestamp for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type in kinds]
    return min(times), max(times)


@pytest.mark.slow
def test_two_cli_runs_at_once_never_mix_or_lose_data(sample_root, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    # The DAGSTER_HOME exists, as it does once anyone has run anything there: two processes that
    # both create a new home's SQLite tables race in Dagster itself ("table
    # asset_daemon_asset_evaluations already exists", seen here with the machine loaded), which
    # is not what this test is about.
    dg.DagsterInstance.from_config(str(home)).dispose()
    command = [
        str(Path(sys.executable).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "fruits_assets.definitions",
        "--select",
        "*",
    ]
    env = cli_env(home, out, sample_root)
    # The second run asks for another input size: the arrays and all after them change again.
    envs = [env, {**env, "FRUITS_IMAGE_SIZE": "128"}]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = []
    for log, run_env in zip(logs, envs, strict=True):
        processes.append(
            subprocess.Popen(command, cwd=PROJECT, env=run_env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        )
        time.sleep(2)
    for process in processes:
        process.wait(timeout=900)
    texts = [log.read_text() for log in logs]
    for process, text in zip(processes, texts, strict=True):
        assert process.returncode == 0 and "RUN_SUCCESS" in text, text[-3000:]
    assert sum("waiting for run" in text for text in texts) == 1, "exactly one run waited for the other"

    images = sum(1 for p in sample_root.rglob("*.jpg"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = sorted(instance.get_run_records(), key=lambda r: r.end_time)
        assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.SUCCESS] * 2
        first_steps, second_steps = (step_times(instance, r.dagster_run.run_id) for r in runs)
        assert first_steps[1] <= second_steps[0], "the second run's steps started after the first run's ended"
        stored, computed_by = [], {}
        for record in runs:
            run_id = record.dagster_run.run_id
            made = materializations(instance, run_id)
            assert set(ASSETS) <= set(made), (run_id, sorted(made))
            assert made["image_features"]["rows"] == images
            assert made["pca_features_csv"]["csv_rows"] == images, "a successful run has every image"
            computed_by.update({asset: run_id for asset in ASSETS if "unchanged" not in made[asset]})
            for entry in instance.all_logs(run_id):
                event = entry.dagster_event
                assert event is None or event.event_type not in (
                    dg.DagsterEventType.STEP_FAILURE,
                    dg.DagsterEventType.STEP_UP_FOR_RETRY,
                ), entry.user_message
            stored += [m["stored_at"] for m in made.values() if "stored_at" in m]
        second = runs[1].dagster_run.run_id
        assert "unchanged" in materializations(instance, second)["raw_images"], "the same photos: nothing new"
        # The same photos: the same listing and the same rejections; everything sized anew.
        assert {a for a, run in computed_by.items() if run == second} == set(ASSETS) - {"raw_images", "rejected_images"}
    # Each current version comes from the last run that computed it, and the CSV is whole.
    for asset in ASSETS:
        assert json.loads((out / asset / "_CURRENT.json").read_text())["run_id"] == computed_by[asset], asset
    csv = pd.read_csv(out / "pca_features_csv" / "pca_features.csv")
    assert len(csv) == images
    # Nothing either run wrote was deleted (the first run's versions are the previous ones).
    assert all(Path(path).exists() for path in stored), [p for p in stored if not Path(p).exists()]


def nan_weights(path: Path, image_size: int) -> Path:
    """A weights file that loads, but makes every feature NaN (a corrupt upload, say)."""
    from fruits_assets.featurize import load_model, random_weights

    model = load_model(random_weights(image_size), image_size)
    weights = model.get_weights()
    weights[0] = np.full_like(weights[0], np.nan)
    model.set_weights(weights)
    model.save_weights(str(path))
    return path


def test_a_version_failing_its_blocking_check_never_becomes_current(materialized, tmp_path):
    sample_root, out = materialized  # a good run
    features_before = io_manager(out).current(dg.AssetKey("image_features"))
    csv_before = pd.read_csv(out / "pca_features_csv" / "pca_features.csv")

    # A run whose features are all NaN: the blocking check fails, the version stays staged.
    bad = materialize(
        out, run_config(sample_root, nan_weights(tmp_path / "nan.weights.h5", 96), 96), raise_on_error=False
    )
    assert not bad.success
    passed, _, metadata = check_results(bad)["vectors_complete_and_finite"]
    assert not passed and metadata["bad_vectors"] == len(csv_before)
    assert metadata["image_features current version"].startswith(features_before["version"])
    assert "not published" in metadata["image_features current version"]
    assert metadata_of(bad, "image_features")["publication"].startswith("staged")
    assert io_manager(out).current(dg.AssetKey("image_features")) == features_before
    assert "pca_model" not in {e.asset_key.to_user_string() for e in bad.get_asset_materialization_events()}

    # Another run re-fits PCA from the stored features: it reads the previous, good version.
    refit = materialize(
        out,
        run_config(sample_root, "random", 96),
        selection=dg.AssetSelection.assets("pca_model", "pca_features_csv").checks_for_assets()
        | dg.AssetSelection.assets("pca_model", "pca_features_csv"),
    )
    assert refit.success
    csv_after = pd.read_csv(out / "pca_features_csv" / "pca_features.csv")
    pd.testing.assert_frame_equal(csv_after, csv_before)


def test_dagster_dev_queues_runs_of_this_code_location_one_at_a_time(tmp_path):
    """README's `dagster dev` home: the run queue admits one run of the code location at a time."""
    import shutil

    shutil.copy(PROJECT / ".dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert {"key": "dagster/code_location", "value": "fruits_assets", "limit": 1} in limits


def test_a_version_waits_for_its_blocking_check_only_when_the_check_runs(spark, sample_root, tmp_path):
    """Dagster's own record of the checks decides: with its blocking check in the run, the new
    version of preprocessed_images is staged, then published by the check; materialized without
    its checks, it is current at once (it would otherwise stay staged forever)."""
    out = tmp_path / "out"
    assets = dg.AssetSelection.assets("raw_images", "preprocessed_images")
    with_check = materialize(out, run_config(sample_root, limit_per_class=1), selection=assets)
    assert with_check.success
    assert metadata_of(with_check, "preprocessed_images")["publication"].startswith(
        "staged: becomes current when the blocking check counts_reconcile passes"
    )
    assert check_results(with_check)["counts_reconcile"][2]["preprocessed_images current version"].endswith(
        "(published: counts_reconcile passed)"
    )
    without = materialize(out, run_config(sample_root, limit_per_class=2), selection=assets.without_checks())
    assert without.success and "counts_reconcile" not in check_results(without)
    assert metadata_of(without, "preprocessed_images")["publication"] == "current"
    assert io_manager(out).current(dg.AssetKey("preprocessed_images"))["run_id"] == without.run_id
