"""Versions of the assets under one root (a folder, or s3://bucket/prefix): write, audit, publish,
one writer at a time.

Layout, per asset (a manifest names its version folder relative to its asset's folder, so a root
can be copied or moved, e.g. `aws s3 sync` to another prefix, and still read):
    <asset>/v-<utc time>-<run>-<random>/...   one materialization's data, written once, never changed
    <asset>/_staged/<run id>.json             what a run wrote (a manifest), not yet or never published
    <asset>/_CURRENT.json                     the published version: what users and other runs read
    <asset>/<file>                            for a CSV: a copy of the published version's file
and for the whole root:
    _lock, _lock.json                         who writes now (`RunLock`)
    _runs/<run id>.json                       the versions that were current when that run started

The rules (issue "two runs at once"):
- **One writer per root.** A run takes the root's lock when it starts and holds it to its end; a
  second run waits (FRUITS_LOCK_WAIT_SECONDS), saying whom it waits for, then starts on the first
  one's results. Locally the lock is an OS file lock (freed even by SIGKILL); on S3 a lease kept
  alive by a heartbeat and taken with S3's conditional writes (no rename, no list-then-write).
- **A run reads what it wrote, else what was current when it started**: its own staged version of
  an asset first, else the run's snapshot (`_runs/<run id>.json`), taken with the lock.
- **Write, audit, publish.** A version becomes current (`_CURRENT.json`, one atomic write) when
  its blocking checks pass, or at once for an asset without any; a version that fails stays
  staged, never current.
- **Cleanup never deletes what a run may read**: only while holding the lock, only versions that
  are neither current, nor the previous current (a reader outside any run may still be reading
  it), nor this run's, nor holding files that one of those includes by reference (an incremental
  version lists in `inherits` the unchanged Parquet files of earlier versions it reads as its own).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from fruits_assets.errors import FruitsConfigError
from fruits_assets.incremental import versions_read_by
from fruits_assets.storage import Storage, is_s3, join

CURRENT = "_CURRENT.json"
STAGED = "_staged"
RUNS = "_runs"
LOCK_INFO = "_lock.json"


class NotMaterializedError(FruitsConfigError):
    """An asset has no version to read: materialize it first."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class VersionStore:
    """Versions of the assets under `root`; see the module docstring."""

    root: str
    storage: Storage

    def asset_dir(self, asset: str) -> str:
        return join(self.root, *asset.split("/"))

    def location(self, manifest: dict) -> str:
        """The folder of a manifest's version, under this root."""
        return join(self.asset_dir(manifest["asset"]), manifest["version"])

    def _read_json(self, uri: str) -> dict | None:
        try:
            return json.loads(self.storage.read_bytes(uri))
        except (FileNotFoundError, KeyError):
            return None
        except Exception as error:  # S3: NoSuchKey
            if "NoSuchKey" in str(error) or "404" in str(error):
                return None
            raise

    def _write_json(self, uri: str, value: dict) -> None:
        self.storage.write_bytes(uri, json.dumps(value, indent=1).encode())

    # -- writing ------------------------------------------------------------------------------
    def new_version(self, asset: str, run_id: str) -> tuple[str, str]:
        """A fresh version's (name, uri): unique per attempt, so a retry never writes into the
        folder of an earlier attempt, and two runs never share one."""
        name = f"v-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{run_id[:8]}-{uuid.uuid4().hex[:6]}"
        return name, join(self.asset_dir(asset), name)

    def stage(self, asset: str, run_id: str, manifest: dict) -> dict:
        manifest = {**manifest, "asset": asset, "run_id": run_id, "written_at": _now()}
        self._write_json(join(self.asset_dir(asset), STAGED, f"{run_id}.json"), manifest)
        return manifest

    def staged(self, asset: str, run_id: str) -> dict | None:
        return self._read_json(join(self.asset_dir(asset), STAGED, f"{run_id}.json"))

    def publish(self, asset: str, run_id: str, because: str) -> dict:
        """Make this run's staged version of `asset` the current one; then clean up."""
        manifest = self.staged(asset, run_id)
        if manifest is None:
            raise NotMaterializedError(f"Run {run_id} staged no version of {asset!r}: nothing to publish.")
        previous = self.current(asset)
        manifest = {**manifest, "published_at": _now(), "published_because": because}
        for name in manifest.get("published_copies", []):
            # A stable path for a file users open by name (the CSV): replaced whole, atomically.
            self.storage.copy(join(self.location(manifest), name), join(self.asset_dir(asset), name))
        self._write_json(join(self.asset_dir(asset), CURRENT), manifest)
        self.clean_up(asset, keep=versions_read_by(manifest) | versions_read_by(previous), run_id=run_id)
        return manifest

    def record_check(self, asset: str, run_id: str, version: str, check: str, record: dict) -> None:
        """Keep a check's result in the manifests of the version it checked (this run's staged
        one, and the current one if it is that version already): a later run that reads the same
        version reuses it."""
        for uri in (join(self.asset_dir(asset), STAGED, f"{run_id}.json"), join(self.asset_dir(asset), CURRENT)):
            manifest = self._read_json(uri)
            if manifest is not None and manifest.get("version") == version:
                manifest.setdefault("checks", {})[check] = record
                self._write_json(uri, manifest)

    def clean_up(self, asset: str, keep: set, run_id: str) -> list[str]:
        """Delete old versions and staged manifests of `asset` (call it holding the lock)."""
        deleted = []
        asset_dir = self.asset_dir(asset)
        for name in self.storage.list_children(asset_dir):
            if name.startswith("v-") and name not in keep and run_id[:8] not in name:
                self.storage.delete_tree(join(asset_dir, name))
                deleted.append(name)
        for name in self.storage.list_files_in(join(asset_dir, STAGED)):
            if name != f"{run_id}.json":
                self.storage.delete(join(asset_dir, STAGED, name))
        return deleted

    # -- reading ------------------------------------------------------------------------------
    def current(self, asset: str) -> dict | None:
        return self._read_json(join(self.asset_dir(asset), CURRENT))

    def assets(self) -> list[str]:
        return [name for name in self.storage.list_children(self.root) if not name.startswith(("_", "."))]

    def snapshot(self, run_id: str) -> dict:
        """Record the current version of every asset, for this run's reads (under the lock)."""
        versions = {asset: manifest for asset in self.assets() if (manifest := self.current(asset))}
        self._write_json(
            join(self.root, RUNS, f"{run_id}.json"), {"run_id": run_id, "taken_at": _now(), "assets": versions}
        )
        return versions

    def started_with(self, asset: str, run_id: str) -> dict | None:
        """The version of `asset` that was current when run `run_id` started (its snapshot; the
        current one for a run without a snapshot), or None."""
        snapshot = self._read_json(join(self.root, RUNS, f"{run_id}.json"))
        if snapshot is not None:
            return snapshot["assets"].get(asset)
        return self.current(asset)

    def for_run(self, asset: str, run_id: str | None) -> dict:
        """The version `run_id` reads: its own staged one, else the one current when it started
        (its snapshot), else (outside a run, or a run without a snapshot) the current one."""
        manifest = None
        if run_id is not None:
            manifest = self.staged(asset, run_id)
            if manifest is None:
                snapshot = self._read_json(join(self.root, RUNS, f"{run_id}.json"))
                if snapshot is not None:
                    manifest = snapshot["assets"].get(asset)
                    if manifest is None:
                        raise NotMaterializedError(
                            f"Asset {asset!r} had no version at {self.asset_dir(asset)} when this run "
                            "started: materialize it first (or in the same run)."
                        )
        manifest = manifest or self.current(asset)
        if manifest is None:
            raise NotMaterializedError(
                f"Asset {asset!r} has no materialization at {self.asset_dir(asset)}: materialize it first."
            )
        return manifest

    def forget_run(self, run_id: str) -> None:
        self.storage.delete(join(self.root, RUNS, f"{run_id}.json"))


# -- one writer at a time ---------------------------------------------------------------------
class LockTimeout(FruitsConfigError):
    """Another run kept the root longer than this run would wait."""


@dataclass
class RunLock:
    """The root's writer lock, held by one run (see the module docstring).

    Re-entrant for its run: a step of the same run in another process (an EMR step, whose
    resources start on the cluster) finds the lock held by its own run and goes on, without
    owning it (only the owner keeps it alive and releases it).
    """

    store: VersionStore
    run_id: str
    log: Callable[[str], None] = print
    wait_seconds: float = 3600.0
    poll_seconds: float = 1.0
    lease_seconds: float = 120.0  # S3: a lease not renewed for this long is abandoned
    owner: bool = False
    _handle: object = field(default=None, repr=False)
    _etag: str | None = field(default=None, repr=False)
    _heartbeat: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _since: str = field(default_factory=_now, repr=False)
    lost: str | None = None

    @property
    def info_uri(self) -> str:
        return join(self.store.root, LOCK_INFO)

    def _info(self) -> dict:
        return {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": self._since,
            "lease_seconds": self.lease_seconds,
        }

    def _holder(self) -> dict:
        return self.store._read_json(self.info_uri) or {}

    def acquire(self) -> RunLock:
        started, last_said = time.monotonic(), None
        while True:
            holder = self._try_acquire()
            if holder is None:
                return self
            waited = time.monotonic() - started
            who = (
                f"run {holder.get('run_id', '?')} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
                f"since {holder.get('since', '?')})"
            )
            if waited > self.wait_seconds:
                raise LockTimeout(
                    f"{self.store.root} is being written by {who}; waited {waited:.0f} s "
                    f"(FRUITS_LOCK_WAIT_SECONDS={self.wait_seconds:.0f}). Run again when it is done."
                )
            if last_said is None or time.monotonic() - last_said >= 30:
                self.log(f"waiting for {who} to finish writing {self.store.root} ({waited:.0f} s so far)")
                last_said = time.monotonic()
            time.sleep(self.poll_seconds)

    def _try_acquire(self) -> dict | None:
        """None when this run holds the lock now (as owner, or re-entrant); else the holder."""
        holder = self._holder()
        if holder.get("run_id") == self.run_id:
            return None  # a step of this run, in another process: the owner keeps the lock
        if is_s3(self.store.root):
            return self._try_acquire_s3()
        return self._try_acquire_local()

    def _try_acquire_local(self) -> dict | None:
        import fcntl

        os.makedirs(self.store.root, exist_ok=True)
        handle = open(os.path.join(self.store.root, "_lock"), "a+")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return self._holder() or {"run_id": "?"}
        self._handle, self.owner = handle, True
        self.store._write_json(self.info_uri, self._info())
        return None

    def _try_acquire_s3(self) -> dict | None:
        storage = self.store.storage
        body = json.dumps(self._info()).encode()
        etag = storage.put_if_absent(self.info_uri, body)
        if etag is None:
            # Abandoned if not renewed within the lease its holder declared.
            lease = float(self._holder().get("lease_seconds", self.lease_seconds))
            stale = storage.stale_etag(self.info_uri, lease)
            if stale is None:
                return self._holder() or {"run_id": "?"}
            etag = storage.replace_if_match(self.info_uri, body, stale)  # take an abandoned lease
            if etag is None:
                return self._holder() or {"run_id": "?"}
            self.log(f"took over the abandoned lock of {self.store.root} (no heartbeat for {lease:.0f} s)")
        self._etag, self.owner = etag, True
        self._heartbeat = threading.Thread(target=self._keep_alive, name="fruits-lock-heartbeat", daemon=True)
        self._heartbeat.start()
        return None

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4) and self.renew():
            pass

    def renew(self) -> bool:
        """Renew the S3 lease (the heartbeat); False, and `lost` set, if another run took it."""
        etag = self.store.storage.replace_if_match(self.info_uri, json.dumps(self._info()).encode(), self._etag)
        if etag is None:
            self.lost = f"the lock of {self.store.root} was taken by another run (heartbeat missed)"
            return False
        self._etag = etag
        return True

    def check(self) -> None:
        """Raise before publishing if this run no longer holds the root."""
        if not self.owner and not self.lost and self._holder().get("run_id") != self.run_id:
            self.lost = f"the lock of {self.store.root} is no longer this run's"
        if self.lost:
            raise FruitsConfigError(f"Not published: {self.lost}. Run again.")

    def release(self) -> None:
        if not self.owner:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
        with contextlib.suppress(Exception):
            self.store.forget_run(self.run_id)
        if is_s3(self.store.root):
            if not self.lost:
                self.store.storage.delete_if_match(self.info_uri, self._etag)
        else:
            with contextlib.suppress(Exception):
                self.store.storage.delete(self.info_uri)
            self._handle.close()  # frees the file lock
        self.owner = False
