"""Faults: S3 that is down then up, S3 that never comes up, a run that dies while committing its
output, a Spark without an S3 connector, and secrets that must never be committed.

What is REAL here: a local Spark session (2 cores), Dagster runs (`dg.materialize`, in-process
executor) with the project's own assets, IO manager and `RetryPolicy`, and an S3 API server
(moto's `ThreadedMotoServer`, server mode) on 127.0.0.1 reached over HTTP by boto3 through the
`s3_endpoint_url` setting. "S3 is down" is real too: nothing listens on the port, so
boto3 gets a real connection refusal. There is no in-process mock of boto3.

What is SIMULATED, and how:
- The outage's end: the test starts the S3 server itself once Dagster has recorded the first
  failed attempt (a STEP_UP_FOR_RETRY event). It does so synchronously, from the run's own event
  stream (a wrapper around `instance.handle_new_event` of the test's ephemeral instance), so the
  server is up before the retry's delay even starts: no sleep, no race with the retry's jitter.
- Nothing about retries: the production `RetryPolicy` (2 retries, 5 s exponential backoff with
  jitter) runs as it is, so these tests wait for its delays (~5-20 s).
- A failure while the IO manager commits: `Storage.write_bytes` raises when it writes
  `_CURRENT.json` (Spark's Parquet write before it is real).
- The secret scan's ability to fail is shown on a temporary file holding a fake key.
"""

import json
import re
import secrets
import string
import subprocess
from pathlib import Path

import boto3
import dagster as dg
import pytest
from moto.server import ThreadedMotoServer

from fruits_assets.assets import raw_images
from fruits_assets.errors import FruitsConfigError, spark_filesystem_errors
from fruits_assets.sample_data import generate_sample
from fruits_assets.storage import Storage
from fruits_assets.versions import CURRENT as MANIFEST
from fruits_assets_tests.conftest import PROJECT_ROOT
from fruits_assets_tests.helpers import free_port, io_manager, materialize, run_config

REGION = "eu-west-1"


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_images(tmp_path_factory) -> tuple[Path, int]:
    """A few synthetic images in the Fruits-360 layout, to upload: 8 classes x (2 + 1)."""
    root = generate_sample(tmp_path_factory.mktemp("faults") / "images", 2, 1)
    files = [p for p in root.rglob("*") if p.is_file()]
    return root, len(files)


def start_s3(port: int, bucket: str, images: Path) -> ThreadedMotoServer:
    """A moto S3 server on 127.0.0.1:port holding `images` under s3://bucket/images/."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # returns once the server accepts connections
    client = boto3.client("s3", region_name=REGION, endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    for path in sorted(p for p in images.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"images/{path.relative_to(images).as_posix()}")
    return server


def on_event(instance: dg.DagsterInstance, event_type: dg.DagsterEventType, action) -> list:
    """Call `action()` once, synchronously, when the run records an event of `event_type`.

    Every event of an in-process run goes through `instance.handle_new_event`, in the thread that
    runs the step: the step cannot go on (e.g. start its retry delay) before `action` returns.
    """
    original = instance.handle_new_event
    seen = []

    def handle_new_event(event, *args, **kwargs):
        original(event, *args, **kwargs)
        if event.is_dagster_event and event.dagster_event.event_type == event_type and not seen:
            seen.append(event)
            action()

    instance.handle_new_event = handle_new_event
    return seen


def s3_images_config(images_root: str, port: int, **settings) -> dict:
    """Images on the S3 server at `port` (any other port: an S3 that is down)."""
    return run_config(images_root, s3_endpoint_url=f"http://127.0.0.1:{port}", **settings)


def events_of(result, event_type: dg.DagsterEventType) -> list:
    return [e for e in result.all_events if e.event_type == event_type]


def error_chain(error) -> list[str]:
    """The messages a user reads for a failed step: the headline, then each cause's."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return messages


def load_current(output_root: Path, asset: str):
    manager = io_manager(output_root)
    manifest = manager.current(dg.AssetKey(asset))
    return manifest, manager.load_manifest(manifest)


# -- 1. S3 down at the first attempt, up before the retry ----------------------------------------
@pytest.mark.slow
def test_step_retries_until_s3_is_back(spark, tmp_path, s3_images):
    """The S3 outage fails the first attempt; the RetryPolicy's retry reads every image."""
    images, files = s3_images
    port, bucket = free_port(), "fruits-retry"
    instance = dg.DagsterInstance.ephemeral()
    servers = []
    retried = on_event(
        instance,
        dg.DagsterEventType.STEP_UP_FOR_RETRY,
        lambda: servers.append(start_s3(port, bucket, images)),
    )
    try:
        result = materialize(
            tmp_path / "out", s3_images_config(f"s3://{bucket}/images", port), assets=[raw_images], instance=instance
        )
    finally:
        for server in servers:
            server.stop()

    assert result.success
    assert retried and servers, "the first attempt should have failed and asked for a retry"
    [restarted] = events_of(result, dg.DagsterEventType.STEP_RESTARTED)
    assert restarted.step_key == "raw_images"
    assert not events_of(result, dg.DagsterEventType.STEP_FAILURE)
    # The first attempt failed because the endpoint was unreachable, and said so.
    [up_for_retry] = events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)
    assert f"127.0.0.1:{port}" in "\n".join(error_chain(up_for_retry.event_specific_data.error))

    # What the run stored (the in-memory frame is lazy: it would re-read S3, now stopped).
    manifest, stored = load_current(tmp_path / "out", "raw_images")
    assert manifest["run_id"] == result.run_id
    rows = stored.collect()
    assert len(rows) == files == 24
    assert all(r["reason"] is None and r["size"] > 0 for r in rows)
    assert {r["split"] for r in rows} == {"Training", "Test"}
    assert all(r["path"].startswith(f"s3://{bucket}/images/") for r in rows)


# -- 2. S3 unavailable throughout -------------------------------------------------------------------
@pytest.mark.slow
def test_unreachable_s3_fails_naming_the_endpoint(spark, tmp_path, monkeypatch):
    """Retries run out; the failure names the endpoint, and no credential reaches the run's logs."""
    # A distinctive fake secret: if botocore or our errors ever logged it, the last assert sees it.
    fake_secret = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake_secret)
    port = free_port()  # nothing ever listens here
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(
        tmp_path / "out",
        s3_images_config("s3://fruits-down/images", port),
        assets=[raw_images],
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    assert len(events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)) == 2  # retried, not refused
    [failure] = events_of(result, dg.DagsterEventType.STEP_FAILURE)
    messages = error_chain(failure.step_failure_data.error)
    # Dagster's headline says the retries ran out; the first cause is ours, and says what to check.
    assert messages[0] == "Exceeded max_retries of 2"
    cause = messages[1]
    assert cause.startswith("fruits_assets.errors.StorageUnreachableError")
    assert f"http://127.0.0.1:{port}" in cause
    assert "s3://fruits-down/images" in cause

    logged = "\n".join(
        (e.user_message or "") + str(e.dagster_event.event_specific_data if e.dagster_event else "")
        for e in instance.all_logs(result.run_id)
    )
    assert f"127.0.0.1:{port}" in logged
    assert fake_secret not in logged


# -- 3. a run that fails while committing leaves the previous materialization current -------------
def test_failed_commit_keeps_previous_version_and_next_run_cleans_up(spark, tmp_path, sample_root, monkeypatch):
    out = tmp_path / "out"
    config = run_config(sample_root, limit_per_class=2)
    first = materialize(out, config, assets=[raw_images])
    assert first.success
    before, frame = load_current(out, "raw_images")
    before_rows = sorted((r["path"], r["size"]) for r in frame.select("path", "size").collect())
    assert len(before_rows) == 8 * 2 * 2

    real_write_bytes = Storage.write_bytes

    def failing_write_bytes(self, uri, data):
        if uri.endswith(MANIFEST):
            raise OSError(f"injected fault: disk full while writing {uri}")
        return real_write_bytes(self, uri, data)

    more = run_config(sample_root, limit_per_class=3)  # something new: the run writes a version
    with monkeypatch.context() as patch:
        patch.setattr(Storage, "write_bytes", failing_write_bytes)
        second = materialize(out, more, assets=[raw_images], raise_on_error=False)
    assert not second.success
    [failure] = events_of(second, dg.DagsterEventType.STEP_FAILURE)
    assert "injected fault" in "\n".join(error_chain(failure.step_failure_data.error))

    # The failed run's Parquet data was written (orphans), but the commit point still names the
    # first version, which loads with the same rows.
    asset_dir = out / "raw_images"
    versions = sorted(p.name for p in asset_dir.glob("v-*"))
    assert before["version"] in versions and len(versions) >= 2
    after, frame = load_current(out, "raw_images")
    assert after == before
    assert sorted((r["path"], r["size"]) for r in frame.select("path", "size").collect()) == before_rows

    third = materialize(out, more, assets=[raw_images])
    assert third.success
    latest = json.loads((asset_dir / MANIFEST).read_text())
    assert latest["run_id"] == third.run_id
    # The failed run's orphan is removed; the previous current version is kept (a reader outside
    # any run may have opened it a moment ago).
    assert sorted(p.name for p in asset_dir.glob("v-*")) == sorted([latest["version"], before["version"]])
    assert not list(asset_dir.glob(".tmp-*"))


# -- 4. no secret in what git tracks ----------------------------------------------------------------
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)(?:aws_secret_access_key|secret[a-z_]*)[\"']?\s*[:=]\s*[\"']?"
        r"(?P<value>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
    ),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password": re.compile(r"(?i)password\s*=\s*['\"](?P<value>[^'\"]+)"),
}
# moto's fake credentials (fruits_assets_tests/conftest.py): not secrets.
ALLOWED_VALUES = {"testing"}


def find_secrets(path: Path) -> list[str]:
    """`file:line: kind` for every key-like string in a text file; [] for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return []
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for kind, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(line):
                value = match.groupdict().get("value")
                if value is not None and value in ALLOWED_VALUES:
                    continue
                found.append(f"{path}:{number}: {kind}")
    return found


def tracked_files() -> list[Path]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing tracked to scan")
    paths = [PROJECT_ROOT / name for name in listing.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def test_no_secret_in_tracked_files():
    files = tracked_files()
    assert any(p.name == "conftest.py" for p in files)  # the scan really covers the tests
    found = [hit for path in files for hit in find_secrets(path)]
    assert not found, "key-like strings in tracked files:\n" + "\n".join(found)


def test_secret_scan_can_fail(tmp_path):
    fake_key_id = "AKIA" + "ABCDEFGHIJKLMNOP"  # built here so this file itself stays clean
    fake_secret = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY"
    leaked = tmp_path / "settings.env"
    leaked.write_text(
        f"AWS_ACCESS_KEY_ID={fake_key_id}\n"
        f"aws_secret_access_key = '{fake_secret}'\n"
        "-----BEGIN RSA "
        "PRIVATE KEY-----\n"
        "db_pass"
        "word = 'hunter2'\n"
        "AWS_SECRET_ACCESS_KEY=testing\n"
        "password = 'testing'\n"
    )
    found = find_secrets(leaked)
    assert [hit.split(": ", 1)[1] for hit in found] == [
        "AWS access key id",
        "AWS secret access key",
        "private key",
        "password",
    ]
    assert [int(hit.split(":")[1]) for hit in found] == [1, 2, 3, 4]
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\0" + fake_key_id.encode())
    assert find_secrets(binary) == []


# -- 5. Spark without an S3 connector ---------------------------------------------------------------
def test_spark_s3_write_names_the_connector_fix(spark):
    frame = spark.createDataFrame([(1, "a")], "id int, name string")
    with (
        pytest.raises(FruitsConfigError, match=r"S3 connector") as raised,
        spark_filesystem_errors("s3://fruits-bucket/x"),
    ):
        frame.write.mode("overwrite").parquet("s3://fruits-bucket/x")
    message = str(raised.value)
    assert "s3://fruits-bucket/x" in message
    assert "Py4J" not in message and "java." not in message
    assert raised.value.__suppress_context__  # no Java stack trace chained under it


def test_materialize_to_s3_without_connector_fails_once_with_the_fix(
    spark, tmp_path, sample_root, s3_bucket, moto_server
):
    """Assets on s3:// with local Spark (FRUITS_OUTPUT_ROOT=s3://...): one clear, non-retried
    failure naming the fix."""
    result = materialize(
        f"s3://{s3_bucket}/fruits",
        run_config(sample_root, limit_per_class=1, s3_endpoint_url=moto_server),
        assets=[raw_images],
        raise_on_error=False,
    )
    assert not result.success
    assert not events_of(result, dg.DagsterEventType.STEP_UP_FOR_RETRY)  # a config error: no retry
    [failure] = events_of(result, dg.DagsterEventType.STEP_FAILURE)
    [headline, *causes] = error_chain(failure.step_failure_data.error)
    assert "S3 connector" in headline
    assert f"s3://{s3_bucket}/fruits/raw_images/v-" in headline
    assert not causes  # no Py4J / Java stack trace chained under it
    assert failure.step_failure_data.user_failure_data.description == headline.split(": ", 1)[1]
