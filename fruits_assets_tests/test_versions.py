"""The version store and the writer lock, on a local folder and on a real S3 API (moto's server):
what a run reads, what publishing and cleanup do, and one writer at a time - including a writer
that died (SIGKILL locally: the OS frees the lock; on S3: its lease, no longer renewed, is taken
over) and a writer that lost its lease (it must not publish)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fruits_assets.errors import FruitsConfigError
from fruits_assets.storage import Storage
from fruits_assets.versions import LockTimeout, NotMaterializedError, RunLock, VersionStore


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> VersionStore:
    if request.param == "local":
        return VersionStore(str(tmp_path / "assets"), Storage())
    bucket = request.getfixturevalue("s3_bucket")
    return VersionStore(f"s3://{bucket}/fruits", Storage(endpoint_url=request.getfixturevalue("moto_server")))


def write(store: VersionStore, asset: str, run_id: str, value: str) -> str:
    version, uri = store.new_version(asset, run_id)
    store.storage.write_bytes(f"{uri}/value.json", json.dumps(value).encode())
    store.stage(asset, run_id, {"format": "json", "version": version})
    return version


def test_a_run_reads_its_own_version_else_the_one_current_when_it_started(store):
    first = write(store, "features", "run-a", "a")
    store.publish("features", "run-a", because="test")
    store.snapshot("run-b")  # run B starts
    mine = write(store, "pca", "run-b", "b")
    # Another writer publishes meanwhile (a lost lock): run B must not see it.
    write(store, "features", "run-c", "c")
    store.publish("features", "run-c", because="test")
    assert store.for_run("features", "run-b")["version"] == first
    assert store.for_run("pca", "run-b")["version"] == mine, "its own staged version, unpublished"
    assert store.for_run("features", None)["run_id"] == "run-c", "outside a run: the current one"
    with pytest.raises(NotMaterializedError, match="had no version .* when this run started"):
        store.for_run("csv", "run-b")


def test_publishing_keeps_the_current_and_the_previous_version_only(store):
    versions = []
    for run in ("run-1", "run-2", "run-3"):
        versions.append(write(store, "features", run, run))
        store.publish("features", run, because="test")
    failed = write(store, "features", "run-4", "bad")  # staged, its audit failed: never published
    assert store.current("features")["version"] == versions[2]
    kept = {n for n in store.storage.list_children(store.asset_dir("features")) if n.startswith("v-")}
    assert kept == {versions[1], versions[2], failed}
    write(store, "features", "run-5", "good")
    store.publish("features", "run-5", because="test")
    kept = {n for n in store.storage.list_children(store.asset_dir("features")) if n.startswith("v-")}
    assert failed not in kept and versions[2] in kept and len(kept) == 2


def test_cleanup_keeps_the_versions_whose_files_a_kept_version_includes(store):
    """An incremental version includes unchanged files of earlier versions (`inherits`): their
    folders stay while the current or the previous version reads them, and go after."""

    def publish(run: str, inherits: list[str]) -> str:
        version, uri = store.new_version("features", run)
        store.storage.write_bytes(f"{uri}/part-0.parquet", b"rows")
        store.stage("features", run, {"format": "parquet", "version": version, "inherits": inherits})
        store.publish("features", run, because="test")
        return version

    def kept() -> set:
        return {n for n in store.storage.list_children(store.asset_dir("features")) if n.startswith("v-")}

    first = publish("run-1", [])
    second = publish("run-2", [f"{first}/part-0.parquet"])
    third = publish("run-3", [f"{first}/part-0.parquet", f"{second}/part-0.parquet"])
    fourth = publish("run-4", [f"{first}/part-0.parquet"])
    assert kept() == {first, second, third, fourth}, "second: read by third, the previous version"
    fifth = publish("run-5", [])
    assert kept() == {first, fourth, fifth}, "first: still read by fourth, the previous version"
    sixth = publish("run-6", [])
    assert kept() == {fifth, sixth}


def test_one_writer_at_a_time(store):
    first = RunLock(store, "run-1", wait_seconds=5).acquire()
    assert first.owner
    said = []
    with pytest.raises(LockTimeout, match="being written by run run-1"):
        RunLock(store, "run-2", log=said.append, wait_seconds=0.5, poll_seconds=0.1).acquire()
    assert said and "waiting for run run-1" in said[0]
    # A step of run 1 in another process (an EMR step) goes on without owning the lock.
    step = RunLock(store, "run-1", wait_seconds=0.5).acquire()
    assert not step.owner
    step.check()
    first.release()
    second = RunLock(store, "run-2", wait_seconds=5).acquire()
    assert second.owner
    with pytest.raises(FruitsConfigError, match="no longer this run's"):
        step.check()
    second.release()


def test_a_killed_writer_frees_the_local_lock(tmp_path):
    root = tmp_path / "assets"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fruits_assets.storage import Storage; "
            "from fruits_assets.versions import RunLock, VersionStore; "
            f"lock = RunLock(VersionStore({str(root)!r}, Storage()), 'run-killed').acquire(); "
            "print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    store = VersionStore(str(root), Storage())
    with pytest.raises(LockTimeout):
        RunLock(store, "run-next", wait_seconds=0.3, poll_seconds=0.1).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = RunLock(store, "run-next", wait_seconds=5, poll_seconds=0.1).acquire()
    assert lock.owner
    lock.release()


def test_an_abandoned_s3_lease_is_taken_over_and_its_owner_cannot_publish(s3_bucket, moto_server):
    store = VersionStore(f"s3://{s3_bucket}/fruits", Storage(endpoint_url=moto_server))
    dead = RunLock(store, "run-dead", lease_seconds=1.0).acquire()
    dead._stop.set()  # its process hangs: no more heartbeats
    time.sleep(2.5)
    said = []
    taker = RunLock(store, "run-next", log=said.append, wait_seconds=10, poll_seconds=0.2, lease_seconds=30).acquire()
    assert taker.owner and any("took over the abandoned lock" in s for s in said)
    assert dead.renew() is False
    with pytest.raises(FruitsConfigError, match="Not published"):
        dead.check()
    taker.release()
