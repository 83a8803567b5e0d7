"""Shared fixtures: a real local Spark session, small image folders, the shared real data, and a
real S3 API server (moto's server mode) on loopback."""

import os
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

from fruits_assets_tests.helpers import TEST_MASTER, free_port  # noqa: E402  (after the credentials)

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


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A small synthetic Fruits-360 folder: 8 classes x (4 Training + 2 Test) JPEGs."""
    from fruits_assets.sample_data import generate_sample

    return generate_sample(tmp_path_factory.mktemp("sample") / "images", 4, 2)


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
def s3_bucket(moto_server) -> str:
    """A fresh, empty bucket in eu-west-1 on the moto server."""
    import boto3

    name = f"fruits-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name="eu-west-1", endpoint_url=moto_server).create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    return name
