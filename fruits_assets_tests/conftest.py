"""Shared fixtures: a real local Spark session, small image folders, one materialized sample, the
shared real data, and a real S3 API server (moto's server mode) on loopback; and the test tiers.

Tiers (markers; README, Tests):
- `fast`: no Spark and no TensorFlow (listing, images, PCA maths, versions, settings, the EMR
  files and CLI against moto, sensor ticks). Every test that is not `spark` or `slow` is `fast`,
  and a `fast` test that starts a JVM or imports TensorFlow fails (`_fast_means_fast`);
- `spark`: a real local Spark session or TensorFlow, in this process: every test that uses the
  `spark` fixture (directly or through another fixture) is marked so, the others by hand;
- `slow`: other processes: the Dagster CLI and webserver, the emulated EMR cluster, the notebook,
  PyPI.
`pytest -m fast` answers in under a minute; `pytest` runs the tiers in that order, on two worker
processes (pyproject.toml's addopts: each file on one worker; a `long` test first, beside the rest).
On one worker (`-n 0`), the guard below sees every fast test before any JVM or TensorFlow.
"""

import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

# Fake credentials for the loopback S3 server, set before anything (Spark's Python workers
# included) starts, so no test can ever reach a real AWS account with real keys.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_PROFILE", None)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Every JVM the tests start (the local Spark sessions, in this process and in the CLI and
# webserver processes they start) compiles with C1 only. The tests' Spark jobs are small and
# short: their JVMs spent much of their CPU in the C2 compiler, for code that stops before it
# pays off. Same results, less CPU: a run of the whole graph on the sample took 23.7 s instead of
# 26.6-27.9 s, and `pytest -m "not fast"` 809 s instead of 864 s. Tests only: a user's runs keep
# the JVM's defaults (long jobs gain from C2). The emulated cluster does the same in its own
# configuration (emr_emulation.THIS_MACHINE_DEFAULTS).
_C1_ONLY = "-XX:TieredStopAtLevel=1"
if _C1_ONLY not in os.environ.get("JAVA_TOOL_OPTIONS", ""):
    os.environ["JAVA_TOOL_OPTIONS"] = f"{os.environ.get('JAVA_TOOL_OPTIONS', '')} {_C1_ONLY}".strip()

from fruits_assets_tests.helpers import TEST_MASTER, free_port  # noqa: E402  (after the credentials)

TIERS = ("fast", "spark", "slow")


def pytest_collection_modifyitems(config, items):
    """Mark every test that is neither `spark` nor `slow` as `fast`, and run the tiers in order:
    the quick answers first, and each fast test in a process that has started no JVM and imported
    no TensorFlow yet, so that the guard below can tell."""
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)
        if not any(item.get_closest_marker(tier) for tier in TIERS[1:]):
            item.add_marker(pytest.mark.fast)
    # On several workers (pytest-xdist, README's `pytest`), whole files are handed out in this
    # order: a `long` test first, so that its minutes run beside the rest of the suite.
    distributed = "PYTEST_XDIST_WORKER" in os.environ
    items.sort(
        key=lambda item: (
            not (distributed and item.get_closest_marker("long")),
            max(i for i, tier in enumerate(TIERS) if item.get_closest_marker(tier)),
        )
    )


def _jvm_started() -> bool:
    pyspark = sys.modules.get("pyspark")
    return pyspark is not None and pyspark.SparkContext._gateway is not None


@pytest.fixture(autouse=True)
def _fast_means_fast(request):
    """A `fast` test that starts a JVM or imports TensorFlow fails: mark it `spark`."""
    if request.node.get_closest_marker("fast") is None:
        yield
        return
    tensorflow, jvm = "tensorflow" in sys.modules, _jvm_started()
    yield
    assert tensorflow or "tensorflow" not in sys.modules, "a fast test imported TensorFlow: mark it spark"
    assert jvm or not _jvm_started(), "a fast test started Spark's JVM: mark it spark"


PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = PROJECT_ROOT.parent / "shared"
SHARED_WEIGHTS = SHARED / "models" / "mobilenet_v2_1.0_backbone.weights.h5"
SHARED_SAMPLE = SHARED / "fruits360-sample"


@pytest.fixture(scope="session")
def spark():
    """One real local Spark session (2 cores) for the whole suite."""
    from pyspark.sql import SparkSession

    from fruits_assets.settings import FruitsSettings
    from fruits_assets.spark import local_config, python_for_workers

    builder = SparkSession.builder
    for key, value in local_config(FruitsSettings(spark_master=TEST_MASTER).resolve({})).items():
        builder = builder.config(key, value)
    with python_for_workers(sys.executable):
        session = builder.config("spark.ui.enabled", "false").getOrCreate()
    yield session
    session.stop()


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """One cache of converted models for the whole session (FRUITS_MODEL_CACHE, inherited by the
    CLI processes the tests start): a model is converted once, not once per output folder, and
    not once per worker either (the session's folder shared by pytest-xdist's workers; a model is
    written atomically, so two workers converting the same one at once both read a whole file)."""
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "model-cache"
    cache.mkdir(exist_ok=True)
    previous = os.environ.get("FRUITS_MODEL_CACHE")
    os.environ["FRUITS_MODEL_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("FRUITS_MODEL_CACHE", None)
    else:
        os.environ["FRUITS_MODEL_CACHE"] = previous


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A small synthetic Fruits-360 folder: 8 classes x (4 Training + 2 Test) JPEGs."""
    from fruits_assets.sample_data import generate_sample

    return generate_sample(tmp_path_factory.mktemp("sample") / "images", 4, 2)


SAMPLE_IMAGES = 8 * (4 + 2)


@pytest.fixture(scope="session")
def _materialized_once(tmp_path_factory, sample_root, spark):
    """The whole graph, materialized once on a copy of the sample at a fixed path (random
    weights, 96 px): (images, output root, the run's result)."""
    from fruits_assets_tests.helpers import materialize, run_config

    base = tmp_path_factory.mktemp("materialized")
    images = shutil.copytree(sample_root, base / "images")
    result = materialize(base / "out", run_config(images))
    assert result.success
    return images, base / "out", result


@pytest.fixture
def materialized_sample(_materialized_once):
    """The materialized sample for a test that only reads it: (images, output root, result)."""
    return _materialized_once


@pytest.fixture
def materialized(_materialized_once, sample_root, tmp_path):
    """A copy of the materialized sample that a test may change: (images, output root). The
    images are restored in place from the sample (their paths are the rows' keys; their identity
    is their content) and the output root is a copy in the test's own folder (versions are named
    relative to their asset's folder)."""
    images, out, _ = _materialized_once
    shutil.rmtree(images)
    shutil.copytree(sample_root, images)
    return images, shutil.copytree(out, tmp_path / "out", ignore=shutil.ignore_patterns("_lock"))


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    if not SHARED_WEIGHTS.exists():
        pytest.skip(f"real MobileNetV2 weights not found at {SHARED_WEIGHTS} (../shared absent)")
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def shared_sample() -> Path:
    if not (SHARED_SAMPLE / "Training").is_dir():
        pytest.skip(f"real Fruits-360 sample not found at {SHARED_SAMPLE} (../shared absent)")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def moto_server():
    """A real S3/EMR/IAM API server (moto server mode) on 127.0.0.1; yields its endpoint URL.

    AWS_ENDPOINT_URL points every boto3 client of this process at it (boto3 honours it), so code
    under test runs unchanged, as a CLI pointed at the server would.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    if previous is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = previous
    server.stop()


@pytest.fixture
def eu_west_1_network(moto_server, monkeypatch):
    """This process on a network that reaches only AWS's eu-west-1 endpoints, which lead to the
    moto server (the EMR emulation's network, aws_network/emulated_aws_network.py), without
    AWS_ENDPOINT_URL or a region variable: a boto3 client made for eu-west-1 works unchanged, one
    made without the region fails as unreachable. (moto's EMR files a cluster under the region
    of the endpoint it was reached at.)"""
    from fruits_assets_tests.aws_network import emulated_aws_network as aws_network

    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "FRUITS_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_network.environment(moto_server).items():
        if name != "PYTHONPATH":
            monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(aws_network.FOLDER))


@pytest.fixture
def s3_bucket(moto_server) -> str:
    """A fresh, empty bucket in eu-west-1 on the moto server."""
    import boto3

    name = f"fruits-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name="eu-west-1", endpoint_url=moto_server).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    return name
