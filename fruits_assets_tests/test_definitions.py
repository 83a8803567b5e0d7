"""The code location loads: Definitions for every deployment, and workspace.yaml via the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from fruits_assets.resources import resources_by_deployment
from fruits_assets.settings import FruitsConfigError, deployment_name

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_local_definitions_are_loadable_and_hold_the_asset_graph():
    from fruits_assets.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    names = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw_images", "preprocessed_images", "rejected_images", "image_features", "pca_model", "pca_features_csv"} <= names
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["preprocessed_images"] == {"raw_images"}
    assert parents["image_features"] == {"preprocessed_images"}
    assert parents["pca_model"] == {"image_features"}
    assert parents["pca_features_csv"] == {"image_features", "pca_model"}
    assert defs.resolve_job_def("fruits_pipeline") is not None


@pytest.mark.parametrize("name", ["local", "emr"])
def test_every_deployment_builds_the_same_resource_keys(name):
    from fruits_assets.definitions import all_assets

    resources = resources_by_deployment(name)
    assert set(resources) == set(resources_by_deployment("local"))
    dg.Definitions.validate_loadable(dg.Definitions(assets=all_assets, resources=resources))


def test_unknown_deployment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FRUITS_DEPLOYMENT", "kubernetes")
    with pytest.raises(FruitsConfigError, match="FRUITS_DEPLOYMENT='kubernetes' is unknown"):
        deployment_name()


def test_workspace_yaml_loads_with_the_dagster_cli(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fruits_assets" in result.stdout + result.stderr
