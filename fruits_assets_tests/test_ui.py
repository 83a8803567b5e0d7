"""The Dagster UI, tested for real: the webserver `dagster dev` starts, from `workspace.yaml`.

One real `dagster-webserver -w workspace.yaml` on a free 127.0.0.1 port, from the repository root
with a throw-away DAGSTER_HOME, serves the whole module. Through its GraphQL API the code location
must have loaded without error and show every asset of `fruits_assets.definitions.defs` with the
pipeline's lineage edges. Then headless Chromium (system `chromium` + `chromium-driver`, driven by
Selenium in `scripts/screenshot_asset_graph.py`) opens the asset graph page, must find every asset name in the
rendered DOM, and saves a PNG. The server (and its code server) is always stopped, even on failure.
"""

import importlib.util
import struct
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT_ROOT / "scripts" / "screenshot_asset_graph.py"

# Always there, whatever else the definitions grow.
CORE_ASSETS = {
    "raw_images",
    "preprocessed_images",
    "rejected_images",
    "image_features",
    "pca_model",
    "pca_features_csv",
}
CORE_EDGES = {
    ("raw_images", "preprocessed_images"),
    ("raw_images", "rejected_images"),
    ("preprocessed_images", "image_features"),
    ("image_features", "pca_model"),
    ("image_features", "pca_features_csv"),
    ("pca_model", "pca_features_csv"),
}

ASSET_GRAPH_QUERY = """
{
  workspaceOrError {
    __typename
    ... on PythonError { message }
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
          ... on RepositoryLocation { repositories { name } }
        }
      }
    }
  }
  assetNodes {
    assetKey { path }
    dependencyKeys { path }
    groupName
  }
}
"""


def load_script():
    spec = importlib.util.spec_from_file_location("screenshot_asset_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ui_script():
    return load_script()


@pytest.fixture(scope="module")
def dagster_home(tmp_path_factory):
    """A fresh DAGSTER_HOME with the repository's instance settings (.dagster_home/dagster.yaml)."""
    import shutil

    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return home


@pytest.fixture(scope="module")
def webserver(ui_script, dagster_home):
    """Base URL of a real dagster-webserver on loopback; stopped (TERM, then KILL) afterwards."""
    home = dagster_home
    # running_webserver starts it in its own process group and, in a try/finally, stops that
    # group (SIGTERM, wait, SIGKILL on timeout) however the tests end.
    with ui_script.running_webserver(startup_timeout=120, dagster_home=home) as server:
        yield server.url
    assert server.stopped(), "the webserver or its code server outlived the tests"


def expected_graph():
    """Asset names and dependency edges, straight from the code location's definitions."""
    from fruits_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    names = {key.to_user_string() for key in keys}
    edges = {(parent.to_user_string(), key.to_user_string()) for key in keys for parent in graph.get(key).parent_keys}
    return names, edges


def test_webserver_serves_the_asset_graph(ui_script, webserver):
    data = ui_script.graphql(webserver, ASSET_GRAPH_QUERY)

    workspace = data["workspaceOrError"]
    assert workspace["__typename"] == "Workspace", workspace
    (entry,) = workspace["locationEntries"]
    assert entry["name"] == ui_script.LOCATION
    assert entry["loadStatus"] == "LOADED"
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location.get("message", location)
    assert [r["name"] for r in location["repositories"]] == [ui_script.REPOSITORY]

    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    edges = {("/".join(dep["path"]), name) for name, n in nodes.items() for dep in n["dependencyKeys"]}
    expected_names, expected_edges = expected_graph()

    assert set(nodes) >= CORE_ASSETS, f"missing: {CORE_ASSETS - set(nodes)}"
    assert set(nodes) == expected_names
    assert edges >= CORE_EDGES, f"missing edges: {CORE_EDGES - edges}"
    assert edges == expected_edges
    assert {n["groupName"] for n in nodes.values()} == {ui_script.GROUP}


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the first, right after the signature)."""
    assert data[12:16] == b"IHDR", "not a PNG: no IHDR chunk first"
    return struct.unpack(">II", data[16:24])


def test_browser_renders_the_asset_graph(ui_script, webserver, tmp_path):
    for tool in (ui_script.CHROMIUM, ui_script.CHROMEDRIVER):
        if not Path(tool).exists():
            pytest.skip(f"{tool} not found: apt-get install chromium chromium-driver")
    names, _ = expected_graph()
    out = tmp_path / "asset_graph.png"

    result = ui_script.screenshot_asset_graph(webserver, out, sorted(names), timeout=60)

    assert set(result["found"]) == names  # every asset's node was rendered in the page's DOM
    assert result["url"].endswith(f"/asset-groups/{ui_script.GROUP}")
    data = out.read_bytes()
    assert data.startswith(ui_script.PNG_MAGIC)
    width, height = png_size(data)
    assert width >= 1000 and height >= 600, (width, height)
    # A rendered graph (nodes, labels, tags) is tens of kB; a blank or tiny error page is far less.
    assert 30_000 < len(data) < 5_000_000, len(data)


LAUNCH_RUN = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
RUN_STATUS = """
query Status($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""


@pytest.fixture
def daemon(ui_script, dagster_home, tmp_path):
    """The dagster-daemon that `dagster dev` starts beside the webserver: it dequeues the runs
    the UI launches (Dagster's default run coordinator queues them)."""
    with ui_script.running_daemon(dagster_home, tmp_path / "daemon.log") as proc:
        yield proc


def test_materializing_from_the_ui_works(ui_script, webserver, daemon, dagster_home):
    """What the UI's "Materialize all" does: launch the job through the webserver's GraphQL API
    (the same mutation the launchpad sends); the daemon dequeues the run, which goes through the
    default run launcher in its own process, on local Spark; it must succeed and leave the CSV
    under $DAGSTER_HOME. (Two runs at once: test_concurrency.py, with the CLI, and the run
    queue's limit of one run of this code location, from the same dagster.yaml.)"""
    import time

    params = {
        "selector": {
            "repositoryLocationName": ui_script.LOCATION,
            "repositoryName": ui_script.REPOSITORY,
            "jobName": "fruits_pipeline",
        },
        "runConfigData": {
            "resources": {
                "settings": {
                    "config": {
                        "images_root": "sample",
                        "limit_per_class": 2,
                        "image_size": 96,
                        "model_weights": "random",
                    }
                }
            }
        },
    }
    launched = ui_script.graphql(webserver, LAUNCH_RUN, {"executionParams": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline, status = time.monotonic() + 600, None
    while time.monotonic() < deadline:
        status = ui_script.graphql(webserver, RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS", f"the run ended {status}; see {dagster_home}/storage"
    assert daemon.poll() is None, "the daemon died"
    csv = Path(dagster_home) / "fruits_output" / "pca_features_csv" / "pca_features.csv"
    assert len(csv.read_text(encoding="utf-8").splitlines()) == 1 + 8 * 2 * 2
