"""New photos cost only their own work: incremental runs, on real local Spark, and the observed
`photos` source asset (a local folder, and a bucket on moto's S3 server).

A run reuses the stored arrays and vectors of images whose path and content (sha256) are
unchanged, at the same image size and with the same model; it decodes and featurizes only new
or changed images, and deleted images disappear from every asset. The counts are asserted from
the assets' own metadata (`reused`, `computed`, `removed`, and raw_images' `decoded_to_check`).
"""

import json
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from dagster._core.definitions.observe import observe  # not exported by dagster 1.13

from fruits_assets.assets import observe_sources
from fruits_assets.sample_data import draw_fruit, generate_sample
from fruits_assets.settings import FruitsSettings
from fruits_assets_tests.helpers import io_manager, load, materialize, metadata_of, run_config


def csv_rows(out) -> pd.DataFrame:
    return pd.read_csv(out / "pca_features_csv" / "pca_features.csv").set_index("path").sort_index()


def spark_jobs_of(spark, action) -> int:
    """How many Spark jobs `action()` ran."""
    group = f"probe-{id(action)}"
    spark.sparkContext.setJobGroup(group, "probe")
    try:
        action()
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup(group))


def add_class(root, name: str, count: int, seed: int = 7) -> None:
    import random

    rng = random.Random(seed)
    folder = root / "Training" / name
    folder.mkdir(parents=True)
    for i in range(count):
        draw_fruit("Kiwi 1", rng).save(folder / f"{i}_100.jpg", quality=95)


@pytest.fixture
def images(tmp_path):
    return generate_sample(tmp_path / "images", 4, 2)  # 48 images


def test_a_first_run_computes_everything(materialized_sample):
    _, _, first = materialized_sample
    for asset in ("raw_images", "preprocessed_images", "image_features"):
        meta = metadata_of(first, asset)
        assert (meta["computed"], meta["reused"], meta["removed"]) == (48, 0, 0), asset


def test_a_second_run_computes_only_what_changed_and_equals_a_run_from_scratch(spark, materialized, tmp_path):
    images, out = materialized  # a first run of the sample's 48 images

    add_class(images, "Kiwi Gold 1", 3)  # 3 new
    changed = sorted((images / "Training" / "Apple Red 1").glob("*.jpg"))[:2]  # 2 changed
    for path in changed:
        path.write_bytes((images / "Test" / "Banana 1" / "0_100.jpg").read_bytes())
    (images / "Test" / "Lime 1" / "1_100.jpg").unlink()  # 1 removed
    second = materialize(out, run_config(images))
    assert second.success
    raw, pre, feat = (metadata_of(second, a) for a in ("raw_images", "preprocessed_images", "image_features"))
    assert raw["decoded_to_check"] == 5 and raw["images"] == 50
    assert (raw["computed"], raw["reused"], raw["removed"]) == (5, 45, 3)  # files read again: 5
    assert (pre["computed"], pre["reused"], pre["removed"]) == (5, 45, 3)  # removed: 2 changed + 1 deleted
    assert (feat["computed"], feat["reused"], feat["removed"]) == (5, 45, 3)
    # Each version keeps its schema: a reader (the next step, the next run) runs no Spark job.
    for asset in ("raw_images", "preprocessed_images", "image_features"):
        assert json.loads((out / asset / "_CURRENT.json").read_text())["schema"]["type"] == "struct"
        assert spark_jobs_of(spark, lambda: load(out, asset)) == 0, asset  # noqa: B023 (called now)

    # The same CSV as a run from scratch on the final folder.
    scratch = materialize(tmp_path / "scratch", run_config(images))
    assert scratch.success
    incremental, fresh = csv_rows(out), csv_rows(tmp_path / "scratch")
    assert list(incremental.index) == list(fresh.index) and len(fresh) == 50
    pcs = [c for c in fresh.columns if c.startswith("pc_")]
    assert list(incremental.columns) == list(fresh.columns)
    np.testing.assert_allclose(incremental[pcs].to_numpy(), fresh[pcs].to_numpy(), atol=1e-4)


def test_a_setting_that_changes_outputs_recomputes_everything(spark, materialized):
    images, out = materialized  # a first run at 96 px
    bigger = materialize(out, run_config(images, image_size=128))
    assert bigger.success
    for asset in ("preprocessed_images", "image_features"):
        meta = metadata_of(bigger, asset)
        assert (meta["computed"], meta["reused"], meta["removed"]) == (48, 0, 48), (asset, meta)
    # The files did not change: raw_images keeps its version and computes nothing.
    assert metadata_of(bigger, "raw_images")["unchanged"].startswith("inputs and settings as for version")


def test_an_interrupted_run_keeps_the_last_version_and_the_next_run_computes_only_what_is_missing(
    spark, materialized, tmp_path
):
    images, out = materialized
    before = io_manager(out).current(dg.AssetKey("image_features"))
    add_class(images, "Kiwi Gold 1", 4)
    # A run that fails in image_features (its weights file is not MobileNetV2's).
    broken = tmp_path / "broken.weights.h5"
    broken.write_text("not hdf5")
    failed = materialize(out, run_config(images, broken), raise_on_error=False)
    assert not failed.success
    assert io_manager(out).current(dg.AssetKey("image_features")) == before, "the last version stays"
    assert metadata_of(failed, "preprocessed_images")["computed"] == 4
    again = materialize(out, run_config(images))
    assert again.success
    assert "unchanged" in metadata_of(again, "preprocessed_images"), "published by the failed run: kept"
    assert metadata_of(again, "image_features")["computed"] == 4
    assert load(out, "image_features").count() == 52


def observe_photos(monkeypatch, root, **env) -> tuple[str, dict]:
    """One observation of the `photos` source asset, as Dagster makes it: (data version, metadata)."""
    monkeypatch.setenv("FRUITS_IMAGES_ROOT", str(root))
    monkeypatch.setenv("FRUITS_MODEL_WEIGHTS", "random")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = observe([observe_sources], resources={"settings": FruitsSettings()})
    observations = [e.event_specific_data.asset_observation for e in result.get_asset_observation_events()]
    [observation] = [o for o in observations if o.asset_key == dg.AssetKey("photos")]
    return observation.data_version, {k: v.value for k, v in observation.metadata.items()}


def test_the_photos_data_version_follows_a_local_folder(images, monkeypatch):
    """Nothing read: paths, sizes and modification times. The same folder, the same version;
    a file added, changed or removed, another one."""
    first, metadata = observe_photos(monkeypatch, images)
    assert metadata["per_split"] == "Test: 16 files; Training: 32 files" and metadata["files"] == 48
    assert observe_photos(monkeypatch, images)[0] == first
    add_class(images, "Kiwi Gold 1", 3)
    added, _ = observe_photos(monkeypatch, images)
    shutil.rmtree(images / "Test" / "Lime 1")
    removed, metadata = observe_photos(monkeypatch, images)
    assert len({first, added, removed}) == 3 and metadata["per_split"] == "Test: 14 files; Training: 35 files"


def test_the_photos_data_version_follows_a_bucket(images, monkeypatch, s3_bucket, moto_server):
    import boto3

    s3 = boto3.client("s3", region_name="eu-west-1", endpoint_url=moto_server)
    for path in sorted(p for p in images.rglob("*.jpg")):
        s3.upload_file(str(path), s3_bucket, f"images/{path.relative_to(images).as_posix()}")
    root = f"s3://{s3_bucket}/images"
    first, metadata = observe_photos(monkeypatch, root, FRUITS_S3_ENDPOINT_URL=moto_server)
    assert metadata["per_split"] == "Test: 16 files; Training: 32 files"
    assert observe_photos(monkeypatch, root, FRUITS_S3_ENDPOINT_URL=moto_server)[0] == first
    s3.put_object(Bucket=s3_bucket, Key="images/Test/Lime 1/0_100.jpg", Body=b"changed bytes")  # same count
    assert observe_photos(monkeypatch, root, FRUITS_S3_ENDPOINT_URL=moto_server)[0] != first


def version_files(out, asset: str) -> tuple[list[Path], list[Path]]:
    """(the current version's own Parquet files, the files of earlier versions it includes)."""
    manifest = json.loads((out / asset / "_CURRENT.json").read_text())
    own = sorted((out / asset / manifest["version"]).glob("part-*.parquet"))
    return own, [out / asset / relative for relative in manifest.get("inherits", [])]


def rows_per_file(out, asset: str) -> list[int]:
    import pyarrow.parquet as pq

    own, inherited = version_files(out, asset)
    return [pq.ParquetFile(part).metadata.num_rows for part in own + inherited]


def test_reused_rows_stay_in_files_of_about_rows_per_partition(spark, images, tmp_path):
    """The reused rows are read from the previous version in the same job as the few new ones:
    sizing Spark's file splits from the new rows alone packed the reused files into a few huge
    partitions (at 6,000 x 224 px: two tasks of ~3,000 images, the JVM out of heap)."""
    out = tmp_path / "out"
    config = run_config(images, rows_per_partition=4)
    assert materialize(out, config).success
    # raw_images' first run reads the files with Spark (a join, a shuffle of 8 partitions): its
    # files are of rows_per_partition rows too, so the next stage gets a partition per file.
    assert max(rows_per_file(out, "raw_images")) <= 4
    first = {asset: max(rows_per_file(out, asset)) for asset in ("preprocessed_images", "image_features")}
    add_class(images, "Kiwi Gold 1", 1)
    assert materialize(out, config).success
    for asset, before in first.items():
        after = rows_per_file(out, asset)
        assert sum(after) == 49
        assert max(after) <= max(before, 8), (asset, before, after)


def test_unchanged_files_are_included_by_reference_not_written_again(spark, images, tmp_path):
    """An incremental version writes only its new rows: the previous version's files are
    included by reference (`inherits`), and a row of such a file that is outdated (a deleted
    image, or one whose bytes changed) is excluded from it (`excludes`), not copied with the
    file's other rows. Cleanup keeps the folders of those files for as long as a kept version
    reads them, across runs; an image whose bytes change and then change back has one row, its
    own (the exclusion of its first row does not hide the new one)."""
    import hashlib

    import pyarrow.parquet as pq

    def rows_in(files):
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    out = tmp_path / "fruits output"  # a space: Spark names the stored files as URL-encoded URIs
    config = run_config(images, rows_per_partition=4)
    assert materialize(out, config).success
    add_class(images, "Kiwi Gold 1", 2)
    deleted = images / "Test" / "Lime 1" / "1_100.jpg"
    deleted.unlink()
    second = materialize(out, config)
    assert second.success
    for asset in ("raw_images", "preprocessed_images", "image_features"):
        meta = metadata_of(second, asset)
        own, inherited = version_files(out, asset)
        assert (meta["computed"], meta["reused"], meta["removed"]) == (2, 47, 1), (asset, meta)
        assert meta["rows_excluded_from_inherited_files"] == 1, "the deleted image, hidden in its file"
        assert inherited and meta["reused_by_reference"] == meta["reused"] == rows_in(inherited) - 1
        assert rows_in(own) == meta["rows_written"] == 2, "only the new rows are written"
        frame = load(out, asset)
        assert frame.count() == 49 and frame.where(frame.path == str(deleted)).count() == 0
    # An image's bytes change, then change back (with a new class): the first version is no
    # longer current nor previous, but its files are still read.
    image = images / "Test" / "Banana 1" / "0_100.jpg"
    before = image.read_bytes()
    image.write_bytes((images / "Test" / "Lime 1" / "0_100.jpg").read_bytes())
    third = materialize(out, config)
    assert third.success
    assert metadata_of(third, "image_features")["computed"] == metadata_of(third, "raw_images")["computed"] == 1
    image.write_bytes(before)
    add_class(images, "Kiwi Gold 2", 1)
    fourth = materialize(out, config)
    assert fourth.success
    assert metadata_of(fourth, "image_features")["computed"] == 2
    assert metadata_of(fourth, "raw_images")["computed"] == 2, "the image whose bytes changed back is read again"
    for asset in ("raw_images", "preprocessed_images", "image_features"):
        own, inherited = version_files(out, asset)
        assert all(f.exists() for f in own + inherited)
        frame = load(out, asset)
        assert frame.count() == 50 and frame.select("path").distinct().count() == 50
        rows = frame.where(frame.path == str(image)).select("fingerprint").collect()
        assert [r.fingerprint for r in rows] == [hashlib.sha256(before).hexdigest()], asset
    assert len(csv_rows(out)) == 50


def test_a_version_that_would_mostly_read_excluded_rows_is_written_whole(spark, images, tmp_path):
    """Compaction: when more than a quarter of the rows in the files a version would inherit are
    excluded ones (here a third of the images deleted), it writes every reused row again and
    inherits nothing, so readers do not keep reading and filtering out dead rows."""
    out = tmp_path / "out"
    config = run_config(images, rows_per_partition=4)
    assert materialize(out, config).success
    deleted = sorted(images.rglob("*.jpg"))[::3]  # 16 of 48, in every file
    for path in deleted:
        path.unlink()
    second = materialize(out, config)
    assert second.success
    for asset in ("raw_images", "preprocessed_images", "image_features"):
        meta = metadata_of(second, asset)
        own, inherited = version_files(out, asset)
        assert (meta["computed"], meta["reused"], meta["removed"]) == (0, 32, 16), (asset, meta)
        assert inherited == [] and meta["reused_by_reference"] == 0
        assert load(out, asset).count() == 32 and rows_per_file(out, asset) and sum(rows_per_file(out, asset)) == 32


def write_version(spark, asset_dir: Path, version: str, rows: list[tuple]) -> list[str]:
    """Rows (path, fingerprint, image) as one Parquet file per row in `asset_dir/version`;
    returns the files as `<version>/<file>`."""
    for row in rows:
        frame = spark.createDataFrame([row], "path string, fingerprint string, image binary")
        frame.coalesce(1).write.mode("append").parquet(str(asset_dir / version))
    return sorted(f"{version}/{p.name}" for p in (asset_dir / version).glob("part-*.parquet"))


def test_a_stored_version_reads_inherited_files_without_their_excluded_rows(spark, tmp_path):
    """An exclusion hides one row of one inherited file: the same path in another file (the new
    row of an image whose bytes changed, or changed back) stays."""
    from fruits_assets.incremental import read_version

    asset = tmp_path / "asset dir"
    old = write_version(spark, asset, "v-1", [("a", "f1", b"A1"), ("b", "f1", b"B1")])
    write_version(spark, asset, "v-2", [("a", "f1", b"A1 again")])
    a_file = next(f for f in old if spark.read.parquet(str(asset / f)).first().path == "a")
    frame = read_version(spark, str(asset / "v-2"), [str(asset / f) for f in old], [[a_file, "a"]])
    assert sorted((r.path, r.image) for r in frame.collect()) == [("a", b"A1 again"), ("b", b"B1")]


def test_reading_a_version_of_many_files_runs_no_spark_job(spark, tmp_path):
    """A read takes the schema from the version's manifest (no job to read a file's footer),
    and the driver lists the files itself, also 32 or more of them (Spark's default lists
    those in a job): an incremental run reads ~15 versions, and a job cost ~0.3 s here."""
    asset = tmp_path / "stored" / "asset"
    old = write_version(spark, asset, "v-1", [(f"p{i}", "f", b"x") for i in range(40)])
    write_version(spark, asset, "v-2", [("q", "f", b"y")])
    manifest = {
        "format": "parquet",
        "asset": "asset",
        "version": "v-2",
        "inherits": old,
        "excludes": [],
        "schema": spark.read.parquet(str(asset / "v-2")).schema.jsonValue(),
    }
    manager = io_manager(tmp_path / "stored")
    frames = []
    assert spark_jobs_of(spark, lambda: frames.append(manager.load_manifest(manifest))) == 0
    assert frames[0].count() == 41


def test_new_rows_are_read_from_the_files_that_hold_them_alone(spark, tmp_path):
    """Planning an incremental stage reads key columns only; the job that computes the new rows
    then reads only the input files holding them, not every stored image of the input."""
    from pyspark.sql import functions as F

    from fruits_assets.incremental import reuse_plan

    asset = tmp_path / "input"
    write_version(spark, asset, "v-1", [(f"p{i}", "f", b"x" * 100) for i in range(4)])
    new_files = write_version(spark, asset, "v-2", [("p9", "f", b"new")])
    current = spark.read.parquet(str(asset / "v-1"), str(asset / "v-2"))
    stored = write_version(spark, tmp_path / "output", "v-1", [(f"p{i}", "f", b"done") for i in range(4)])
    stored_frame = spark.read.parquet(*[str(tmp_path / "output" / f) for f in stored]).withColumn("ok", F.lit(True))
    plan = reuse_plan(
        stored_frame, F.col("ok"), current, ["path", "fingerprint"], ("path", "fingerprint", "image", "ok")
    )
    assert plan.counts == {"reused": 4, "computed": 1, "removed": 0}
    assert [r.path for r in plan.new.collect()] == ["p9"]
    assert [Path(f).name for f in plan.new.inputFiles()] == [Path(f).name for f in new_files]
    assert plan.scanned_rows == 1


def test_a_listing_is_planned_on_the_driver_and_only_its_new_rows_go_to_spark(spark, tmp_path):
    """raw_images plans from its listing, rows on the driver (`DriverRows`): its new rows are those
    whose keys the planning found new, a row with a null key among them, and they alone become a
    Spark relation. Planning runs the stored version's two jobs and none for the listing (sending
    24,000 listed rows to the JVM and collecting their keys back cost 2.1 s and a job), and the
    job that reads the new rows scans no stored file (an anti-join cost 4 jobs, ~2 s)."""
    from pyspark.sql import functions as F

    from fruits_assets.incremental import DriverRows, reuse_plan

    stored = write_version(spark, tmp_path / "raw", "v-1", [(f"p{i}", "f", b"old") for i in range(4)])
    stored_frame = spark.read.parquet(*[str(tmp_path / "raw" / f) for f in stored]).withColumn("ok", F.lit(True))
    rows = pd.DataFrame(
        {
            "path": ["p0", "p1", "p2", "p9", "p8"],
            "fingerprint": ["f", "f", "changed", "f", None],
            "split": ["Training"] * 5,
        },
        index=[10, 11, 12, 13, 14],  # the plan does not depend on the listing's index
    )
    listing = DriverRows(rows, spark, "path string, fingerprint string, split string")
    plans = []
    jobs = spark_jobs_of(
        spark,
        lambda: plans.append(
            reuse_plan(
                stored_frame, F.col("ok"), listing, ["path", "fingerprint"], ("path", "fingerprint", "image", "ok")
            )
        ),
    )
    plan = plans[0]
    assert jobs == 2
    assert plan.counts == {"reused": 2, "computed": 3, "removed": 2}
    assert sorted((r.path, r.fingerprint, r.split) for r in plan.new.collect()) == sorted(
        [("p2", "changed", "Training"), ("p9", "f", "Training"), ("p8", None, "Training")], key=str
    )
    assert plan.new.inputFiles() == []
    assert plan.scanned_rows == 3
    assert list(plan.input_keys["path"]) == ["p0", "p1", "p2", "p9", "p8"]
    # Files removed, none new: an empty relation of the listing's columns.
    removed_only = DriverRows(rows[rows["path"].isin(["p0", "p1"])], spark, listing.schema)
    plan = reuse_plan(stored_frame, F.col("ok"), removed_only, ["path", "fingerprint"], ("path", "fingerprint"))
    assert plan.counts == {"reused": 2, "computed": 0, "removed": 2}
    assert plan.new.columns == ["path", "fingerprint", "split"] and plan.new.count() == 0


def test_a_file_that_could_not_be_read_is_read_again_even_with_the_same_identity(spark, tmp_path):
    """An S3 object whose read failed (a transient error, a permission fixed since) keeps its size
    and ETag, so its identity is unchanged: its stored `read` rejection is not reused, the next
    run reads it again. Verdicts on content (decode) and name (listing) are reused."""
    from pyspark.sql import functions as F

    from fruits_assets.incremental import DriverRows, reuse_plan
    from fruits_assets.spark_jobs import LISTING_SCHEMA, RAW_REUSABLE, RAW_SCHEMA

    rows = [  # path, split, label, reason, stage, size, fingerprint, checked, identity, content
        ("s3://b/Training/A/ok.jpg", "Training", "A", None, None, 3, "f1", True, "etag:3:e1", b"abc"),
        ("s3://b/Training/A/bad.jpg", "Training", "A", "cannot decode", "decode", 3, "f2", True, "etag:3:e2", b"xyz"),
        (
            "s3://b/Training/A/a.txt",
            "Training",
            "A",
            "not an image file name",
            "listing",
            1,
            None,
            False,
            "etag:1:e3",
            None,
        ),
        (
            "s3://b/Training/A/gone.jpg",
            "Training",
            "A",
            "unreadable file: OSError",
            "read",
            5,
            None,
            False,
            "etag:5:e4",
            None,
        ),
    ]
    spark.createDataFrame(rows, RAW_SCHEMA).coalesce(1).write.parquet(str(tmp_path / "raw" / "v-1"))
    stored = spark.read.parquet(str(tmp_path / "raw" / "v-1"))
    listed = [(r[0], r[1], r[2], r[3] if r[4] == "listing" else None, r[8]) for r in rows]
    columns = ["path", "split", "label", "reason", "identity"]
    listing = DriverRows(pd.DataFrame(listed, columns=columns), spark, LISTING_SCHEMA)
    plan = reuse_plan(stored, F.expr(RAW_REUSABLE), listing, ["path", "identity"], tuple(stored.columns))
    assert plan.counts == {"reused": 3, "computed": 1, "removed": 1}
    assert [r.path for r in plan.new.collect()] == ["s3://b/Training/A/gone.jpg"]
