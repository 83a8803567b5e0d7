"""What Dagster says about the assets is true: data versions follow the data, so staleness (the
UI's *Unsynced*, *Materialize unsynced*, declarative automation) follows it too; and a run with
nothing new computes nothing.

Read through Dagster's own staleness API (`CachingStaleStatusResolver`, what the UI asks) on the
instance the runs recorded in.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.observe import observe  # not exported by dagster 1.13
from dagster._utils.test.data_versions import get_stale_status_resolver

from fruits_assets.assets import observe_sources
from fruits_assets.sample_data import draw_fruit
from fruits_assets.settings import FruitsSettings
from fruits_assets_tests.helpers import ALL_ASSETS, materialize, metadata_of, run_config

PROJECT = Path(__file__).resolve().parents[1]
MADE = ("raw_images", "preprocessed_images", "rejected_images", "image_features", "pca_model", "pca_features_csv")


def stale(instance) -> set[str]:
    """The assets Dagster calls stale (Unsynced) now."""
    resolver: CachingStaleStatusResolver = get_stale_status_resolver(instance, [*ALL_ASSETS, observe_sources])
    keys = [dg.AssetKey(name) for name in (*MADE, "pca_quality")]
    return {key.to_user_string() for key in keys if resolver.get_status(key) == StaleStatus.STALE}


def test_unsynced_follows_new_photos_and_a_new_input_size(spark, sample_root, tmp_path, monkeypatch):
    """Dagster 1.13 calls an asset Unsynced when an input of it has a new data version since it
    was made (`_get_stale_causes_materialized`: direct inputs only, not the inputs' inputs). So
    new photos make raw_images' dependents Unsynced once raw_images is materialized alone, and
    each further asset is Unsynced as soon as the one before it has a new data version, down to
    the CSV's evaluation ("Materialize unsynced", or eager automation, walks the same way); a
    new input size, once the sources are observed, makes preprocessed_images Unsynced."""
    import random

    images = shutil.copytree(sample_root, tmp_path / "images")
    out, config = tmp_path / "out", run_config(images, limit_per_class=1)
    with dg.instance_for_test() as instance:
        assert materialize(out, config, instance=instance).success
        assert stale(instance) == set(), "after a full run nothing is unsynced"

        # New photos, then raw_images alone: what is made from it is Unsynced, and so on down.
        (images / "Test" / "Kiwi Gold 1").mkdir()
        draw_fruit("Kiwi 1", random.Random(3)).save(images / "Test" / "Kiwi Gold 1" / "0_100.jpg")
        assert materialize(out, config, selection=["raw_images"], instance=instance).success
        assert stale(instance) == {"preprocessed_images", "rejected_images"}
        chain = ["preprocessed_images", "image_features", "pca_model", "pca_features_csv", "pca_quality"]
        for asset, then in zip(chain, [*chain[1:], None], strict=True):
            assert materialize(out, config, selection=[asset], instance=instance).success
            assert then is None or then in stale(instance), (asset, then)
        assert stale(instance) == {"rejected_images"}
        assert materialize(out, config, instance=instance).success
        assert stale(instance) == set()

        # The environment's input size changes and the sources are observed (the UI's "Observe
        # sources", or the automation sensor): preprocessed_images is Unsynced.
        for name, value in {"IMAGES_ROOT": str(images), "LIMIT_PER_CLASS": "1", "MODEL_WEIGHTS": "random"}.items():
            monkeypatch.setenv(f"FRUITS_{name}", value)
        monkeypatch.setenv("FRUITS_IMAGE_SIZE", "96")
        assert observe([observe_sources], instance=instance, resources={"settings": FruitsSettings()}).success
        assert stale(instance) == set(), "observing the settings the runs used changes nothing"
        monkeypatch.setenv("FRUITS_IMAGE_SIZE", "128")
        assert observe([observe_sources], instance=instance, resources={"settings": FruitsSettings()}).success
        assert stale(instance) == {"preprocessed_images"}
        bigger = run_config(images, limit_per_class=1, image_size=128)
        assert materialize(out, bigger, selection=["preprocessed_images"], instance=instance).success
        assert stale(instance) == {"image_features"}


@pytest.mark.slow
def test_a_run_with_nothing_new_needs_no_java_and_keeps_every_version(sample_root, tmp_path):
    """The same CLI command twice: the second finds nothing new. It runs without Java on its
    PATH or JAVA_HOME (a JVM cannot start), records the same data versions, and every asset's
    current version is still the first run's."""
    import json

    env = {
        **{k: v for k, v in os.environ.items() if k != "JAVA_HOME"},
        "DAGSTER_HOME": str(tmp_path / "home"),
        "FRUITS_OUTPUT_ROOT": str(tmp_path / "out"),
        "FRUITS_IMAGES_ROOT": str(sample_root),
        "FRUITS_IMAGE_SIZE": "96",
        "FRUITS_MODEL_WEIGHTS": "random",
        "FRUITS_SPARK_MASTER": "local[2]",
    }
    (tmp_path / "home").mkdir()
    command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m", "fruits_assets.definitions"]
    first = subprocess.run(
        [*command, "--select", "*"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    versions = {asset: json.loads((tmp_path / "out" / asset / "_CURRENT.json").read_text()) for asset in MADE}
    assert versions["raw_images"]["photos"], "raw_images' version records the photos it was made from"

    no_java = {**env, "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not Path(p, "java").exists())}
    assert not shutil.which("java", path=no_java["PATH"]), "java is still on the PATH"
    second = subprocess.run(
        [*command, "--select", "*"], cwd=PROJECT, env=no_java, capture_output=True, text=True, timeout=600
    )
    log = second.stdout + second.stderr
    assert second.returncode == 0 and "RUN_SUCCESS" in log, log[-3000:]
    for asset in MADE:
        now = json.loads((tmp_path / "out" / asset / "_CURRENT.json").read_text())
        assert now["version"] == versions[asset]["version"], asset
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        [latest] = instance.get_run_records(limit=1)
        made = {}
        for entry in instance.all_logs(latest.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = entry.dagster_event.event_specific_data.materialization
            made[materialization.asset_key.to_user_string()] = materialization
    for asset in MADE:
        assert "unchanged" in made[asset].metadata, asset
        assert made[asset].tags["dagster/data_version"] == versions[asset]["data_version"], asset


def test_a_first_and_a_second_run_record_the_same_data_versions(materialized, tmp_path):
    """In process: the data versions Dagster records for a run with nothing new are those of the
    versions it keeps."""
    images, out = materialized
    again = materialize(out, run_config(images))
    assert again.success
    for asset in MADE:
        meta = metadata_of(again, asset)
        assert "unchanged" in meta and meta["data_version"], asset


def test_the_opt_in_automation_observes_the_sources_and_follows_new_photos():
    """Declarative automation, as the `fruits_automation` sensor would evaluate it (off until
    turned on): every 5 minutes the sources are observed; once the photos have a new data
    version, raw_images and what is made from it are requested (one run; the steps with nothing
    new in it compute nothing). Nothing else is requested."""
    import datetime

    from dagster._core.definitions.data_version import DATA_VERSION_TAG

    from fruits_assets.definitions import defs, fruits_automation

    assert fruits_automation.default_status == dg.DefaultSensorStatus.STOPPED

    def requested(tick):
        return {r.key.to_user_string() for r in tick.results if r.true_subset.size}

    start = datetime.datetime(2026, 12, 4, 10, 1)
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=start)
        at = start + datetime.timedelta(minutes=5)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at, cursor=first.cursor)
        assert requested(tick) == {"photos", "input_size", "model_weights", "pca_settings"}
        for asset in (*MADE, "pca_quality"):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset))
        for source in ("photos", "input_size", "model_weights", "pca_settings"):
            instance.report_runless_asset_event(dg.AssetObservation(asset_key=source, tags={DATA_VERSION_TAG: "v1"}))
        at += datetime.timedelta(minutes=1)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at, cursor=tick.cursor)
        assert requested(tick) == set(), "nothing new, nothing requested"
        instance.report_runless_asset_event(dg.AssetObservation(asset_key="photos", tags={DATA_VERSION_TAG: "v2"}))
        at += datetime.timedelta(minutes=1)
        tick = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=at, cursor=tick.cursor)
        assert requested(tick) == {*MADE, "pca_quality"}


def test_the_jvm_starts_during_the_listing_only_when_the_photos_changed():
    """raw_images starts Spark while it hashes the files only when its current version was made
    from other photos (or there is none): never in a run with nothing new, nor on a version that
    does not record its photos."""
    from fruits_assets.assets import photos_changed

    assert photos_changed(None, "p1"), "a first run"
    assert photos_changed({"photos": "p0"}, "p1"), "new photos"
    assert not photos_changed({"photos": "p1"}, "p1"), "the same photos"
    assert not photos_changed({"data_version": "d"}, "p1"), "a version that does not say"
