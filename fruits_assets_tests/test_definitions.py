"""The code location loads: Definitions for every deployment, and workspace.yaml via the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from fruits_assets.errors import FruitsConfigError
from fruits_assets.resources import fruits_resources
from fruits_assets.settings import FruitsSettings
from fruits_assets_tests.helpers import latest_run_metadata

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_local_definitions_are_loadable_and_hold_the_asset_graph():
    from fruits_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "raw_images",
        "preprocessed_images",
        "rejected_images",
        "image_features",
        "pca_model",
        "pca_features_csv",
    } <= names
    parents = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()
    }
    assert parents["raw_images"] == {"photos"}
    assert parents["preprocessed_images"] == {"raw_images", "input_size"}
    assert parents["image_features"] == {"preprocessed_images", "model_weights"}
    assert parents["pca_model"] == {"image_features", "pca_settings"}
    assert parents["pca_features_csv"] == {"image_features", "pca_model"}
    for source in ("photos", "input_size", "model_weights", "pca_settings"):
        assert graph.get(dg.AssetKey(source)).is_observable and not parents[source]
    assert defs.resolve_job_def("fruits_pipeline") is not None


EMR_SETTINGS = {
    "deployment": "emr",
    "s3_bucket": "fruits-unit",
    "s3_prefix": "team/fruits",
    "emr_cluster_id": "j-UNITTEST",
}


def initialized(settings: dict) -> dict:
    """The code location's resources, initialized for a run with these settings."""
    resources = fruits_resources(FruitsSettings(**settings))
    with dg.build_resources(resources) as built:
        return {key: getattr(built, key) for key in resources}


def test_local_deployment_runs_here_and_stores_in_a_folder(tmp_path):
    built = initialized({"deployment": "local", "output_root": str(tmp_path)})
    assert built["pyspark_step_launcher"] is None
    assert built["io_manager"].base_uri() == str(tmp_path)
    assert not built["pyspark"].started, "the session starts on first use, not with the run"


def test_emr_deployment_launches_steps_and_stores_on_s3():
    from fruits_assets.emr_launcher import FruitsEmrStepLauncher

    built = initialized(EMR_SETTINGS)
    launcher = built["pyspark_step_launcher"]
    assert isinstance(launcher, FruitsEmrStepLauncher)
    assert (launcher.cluster_id, launcher.staging_bucket, launcher.region_name) == (
        "j-UNITTEST",
        "fruits-unit",
        "eu-west-1",
    )
    assert launcher.staging_prefix == "team/fruits/emr-staging"
    assert built["io_manager"].base_uri() == "s3://fruits-unit/team/fruits"
    # The host only launches steps: no Spark session (nor Java) is started for them.
    assert not built["pyspark"].started
    # What every step on the cluster gets as its settings: all explicit, nothing left to its env,
    # but for the host-only ones (test_emr_cluster.py: the host's S3 endpoint, the launcher's knobs).
    config = launcher.settings_config["config"]
    assert set(config) == set(FruitsSettings.model_fields) - FruitsSettings.host_only_fields()
    assert config["deployment"] == "emr" and config["s3_prefix"] == "team/fruits"
    assert all(value is not None for value in config.values())


def test_emr_refuses_a_non_eu_region_unless_allowed():
    settings = FruitsSettings(**EMR_SETTINGS, aws_region="us-east-1")
    with pytest.raises(FruitsConfigError, match="us-east-1.*refused.*FRUITS_ALLOW_NON_EU_REGION"):
        settings.resolve({})
    allowed = FruitsSettings(**EMR_SETTINGS, aws_region="us-east-1", allow_non_eu_region=True).resolve({})
    assert allowed.aws_region == "us-east-1"


def test_emr_needs_its_bucket_and_cluster():
    with pytest.raises(FruitsConfigError, match="FRUITS_S3_BUCKET and FRUITS_EMR_CLUSTER_ID"):
        FruitsSettings(deployment="emr").resolve({})


def test_settings_come_from_the_environment_when_the_run_starts(monkeypatch):
    monkeypatch.setenv("FRUITS_IMAGE_SIZE", "128")
    monkeypatch.setenv("FRUITS_EMR_WAIT_FOR_LOGS", "no")
    settings = FruitsSettings().resolved()
    assert settings.image_size == 128 and settings.emr_wait_for_logs is False
    assert FruitsSettings(image_size=96).resolved().image_size == 96, "the run config wins"
    monkeypatch.setenv("FRUITS_IMAGE_SIZE", "huge")
    with pytest.raises(FruitsConfigError, match="FRUITS_IMAGE_SIZE='huge' is not a valid int"):
        FruitsSettings().resolved()


def test_rows_per_partition_follow_the_image_size_unless_set():
    """Smaller images are less work per row, so their partitions hold more rows by default."""
    assert FruitsSettings(image_size=224).resolve({}).rows_per_partition == 250
    assert FruitsSettings(image_size=96).resolve({}).rows_per_partition == 1361
    assert FruitsSettings().resolve({"FRUITS_IMAGE_SIZE": "160"}).rows_per_partition == 490
    assert FruitsSettings(image_size=96, rows_per_partition=40).resolve({}).rows_per_partition == 40
    assert (
        FruitsSettings().resolve({"FRUITS_IMAGE_SIZE": "96", "FRUITS_ROWS_PER_PARTITION": "7"}).rows_per_partition == 7
    )
    with pytest.raises(FruitsConfigError, match="rows_per_partition must be at least 1"):
        FruitsSettings(rows_per_partition=-1).resolve({})


def test_unknown_deployment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FRUITS_DEPLOYMENT", "kubernetes")
    with pytest.raises(FruitsConfigError, match="FRUITS_DEPLOYMENT='kubernetes' is unknown"):
        FruitsSettings().resolved()


@pytest.mark.slow
def test_workspace_yaml_loads_with_the_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fruits_assets" in result.stdout + result.stderr


def test_no_module_reads_a_setting_when_it_is_imported():
    """Importing every module of the code location and of fruits-emr reads no FRUITS_* variable:
    settings are read when a run starts (FruitsSettings), so `dagster dev` and a long-lived
    process see the values of each run, not those of the moment the code loaded."""
    code = (
        "import importlib, os, pkgutil, sys\n"
        "read = []\n"
        "def reader():\n"  # the first frame that is not os.environ's own machinery
        "    frame = sys._getframe(2)\n"
        "    while frame.f_code.co_filename.endswith('os.py') or '_collections_abc' in frame.f_code.co_filename:\n"
        "        frame = frame.f_back\n"
        "    return frame.f_code.co_filename\n"
        "class Recording(os._Environ):\n"
        "    def __getitem__(self, key):\n"
        "        if str(key).startswith('FRUITS_') and ('fruits_assets' in reader() or 'emr_resources' in reader()):\n"
        "            read.append(key)\n"
        "        return super().__getitem__(key)\n"
        "os.environ = Recording(os.environ._data, os.environ.encodekey, os.environ.decodekey,"
        " os.environ.encodevalue, os.environ.decodevalue)\n"
        "import fruits_assets, emr_resources\n"
        "for package in (fruits_assets, emr_resources):\n"
        "    for module in pkgutil.iter_modules(package.__path__):\n"
        "        importlib.import_module(f'{package.__name__}.{module.name}')\n"
        "print('READ', sorted(set(read)))\n"
    )
    env = {**os.environ, "FRUITS_IMAGE_SIZE": "96", "FRUITS_DEPLOYMENT": "local"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "READ []" in result.stdout, result.stdout


@pytest.mark.slow
def test_every_selection_runs_from_the_cli(sample_root, tmp_path):
    """Selections a user types, including an asset's upstream closure and one asset alone."""
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "FRUITS_OUTPUT_ROOT": str(tmp_path / "out"),
        "FRUITS_IMAGES_ROOT": str(sample_root),
        "FRUITS_IMAGE_SIZE": "96",
        "FRUITS_MODEL_WEIGHTS": "random",
        "FRUITS_SPARK_MASTER": "local[2]",
    }
    (tmp_path / "home").mkdir()
    for selection, materialized in (
        ("*image_features", {"raw_images", "preprocessed_images", "image_features"}),
        ("rejected_images", {"rejected_images"}),
    ):
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "asset",
                "materialize",
                "-m",
                "fruits_assets.definitions",
                "--select",
                selection,
            ],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0 and "RUN_SUCCESS" in log, log[-3000:]
        # What the run materialized, from the instance's event log (the console's lines can be
        # interleaved with Spark's own output on the same stream).
        assert set(latest_run_metadata(tmp_path / "home")) == materialized, log[-3000:]


def test_the_readme_names_every_setting_and_only_real_ones():
    """The README's configuration table is how users find a setting: a renamed variable there
    (FRUITS_TF_THREADS, after the code had moved to FRUITS_MODEL_THREADS) is silently ignored."""
    import re
    from pathlib import Path

    from fruits_assets.settings import FruitsSettings

    defined = {
        field.json_schema_extra["env"] for field in FruitsSettings.model_fields.values() if field.json_schema_extra
    }
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    named = set(re.findall(r"`(FRUITS_[A-Z0-9_]+)`", readme))
    assert named - defined == set(), "the README names settings that do not exist"
    assert defined - named == set(), "settings missing from the README"


def test_every_blocking_check_publishes_its_asset_and_only_those_do():
    """Write-audit-publish is declared once, by `checks.publishing_check`: every blocking check
    was made by it (it publishes its asset's version when it passes), and every check made by it
    blocks. The IO manager stages the versions of exactly these checks' assets."""
    from fruits_assets.checks import PUBLISHES
    from fruits_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    checks = {key: graph.get(key) for key in graph.asset_check_keys}
    publishing = {key for key, node in checks.items() if node.metadata.get(PUBLISHES)}
    blocking = {key for key, node in checks.items() if node.blocking}
    assert publishing == blocking
    assert {(k.asset_key.to_user_string(), k.name) for k in publishing} == {
        ("preprocessed_images", "counts_reconcile"),
        ("image_features", "vectors_complete_and_finite"),
        ("pca_features_csv", "csv_matches_features"),
    }
