"""The PCA CSV's writer (csv_table.py): written by Spark in ranges, no task holding every row, then
joined into one file (Storage.concatenate) whose bytes are those of the earlier single-stream
writer, on tricky paths and non-finite numbers; and the join itself, locally and on a real S3 API
(moto's server): parts copied by S3, parts too small for that gathered here, one PutObject for a
small file, nothing left behind when it fails."""

import contextlib
import csv
import io
import random

import pytest

from fruits_assets import csv_table
from fruits_assets.storage import Storage

MiB = 1024 * 1024


# -- Storage.concatenate (fast) ---------------------------------------------------------------------
@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    """(storage, folder URI) on a local folder or in a fresh bucket of the moto server."""
    if request.param == "local":
        return Storage(), str(tmp_path)
    bucket = request.getfixturevalue("s3_bucket")
    return Storage(endpoint_url=request.getfixturevalue("moto_server")), f"s3://{bucket}/v-1"


def sources(storage, folder, sizes):
    """Files of these sizes (distinct bytes each) in `folder`; ((uri, size), ...), their bytes."""
    rng = random.Random(7)
    listed, data = [], b""
    for i, size in enumerate(sizes):
        content = rng.randbytes(size)
        uri = f"{folder}/parts/part-{i:05d}"
        storage.write_bytes(uri, content)
        listed.append((uri, size))
        data += content
    return listed, data


def test_concatenate_streams_the_parts_in_order_into_one_file(place):
    """Locally a copy; on S3 a multipart upload of 4 parts: the header, the 3 MiB part and the
    first 2 MiB of the 7 MiB one gathered here (5 MiB); the rest of the 7 MiB part copied by S3;
    1000 B and the first 5 MiB - 1000 B of the 6 MiB one gathered; the rest and the last 0.5 MiB
    gathered into the last part, which may be smaller than 5 MiB."""
    storage, folder = place
    header = b"path,label,pc_1\r\n"
    listed, data = sources(storage, folder, [3 * MiB, 7 * MiB, 1000, 0, 6 * MiB + 5, MiB // 2])
    target = f"{folder}/pca_features.csv"
    assert storage.concatenate(target, listed, header) == len(header) + len(data)
    assert storage.read_bytes(target) == header + data
    assert storage.read_range(target, 5, 12) == (header + data)[5:12]
    if folder.startswith("s3://"):
        bucket, key = target[5:].split("/", 1)
        head = storage.client.head_object(Bucket=bucket, Key=key, PartNumber=1)
        assert head["ServerSideEncryption"] == "AES256"
        sizes = [
            storage.client.head_object(Bucket=bucket, Key=key, PartNumber=n)["ContentLength"]
            for n in range(1, head["PartsCount"] + 1)
        ]
        assert sizes == [5 * MiB, 5 * MiB + len(header), 5 * MiB, MiB + 5 + 1000 + MiB // 2]


def test_a_small_file_is_one_put_and_a_failed_join_leaves_nothing(place):
    storage, folder = place
    listed, data = sources(storage, folder, [10, 0, 2000])
    target = f"{folder}/small.csv"
    storage.concatenate(target, listed, b"h\r\n")
    assert storage.read_bytes(target) == b"h\r\n" + data
    if folder.startswith("s3://"):
        bucket, key = target[5:].split("/", 1)
        assert "-" not in storage.client.head_object(Bucket=bucket, Key=key)["ETag"]  # not multipart

    big, _ = sources(storage, folder, [6 * MiB])
    missing = (f"{folder}/parts/gone", 6 * MiB)
    with pytest.raises(Exception):  # noqa: B017 - FileNotFoundError locally, a ClientError on S3
        storage.concatenate(f"{folder}/failed.csv", [*big, missing], b"h\r\n")
    assert not storage.exists(f"{folder}/failed.csv")
    if folder.startswith("s3://"):
        bucket = folder[5:].split("/", 1)[0]
        assert not storage.client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    else:
        assert [name for name in storage.list_files_in(folder) if name.startswith(".tmp")] == []


# -- write_csv (spark) ------------------------------------------------------------------------------
def reference_csv(frame, k: int, local_file: str) -> int:
    """The earlier writer, unchanged (csv_table.write_csv before issue 28): every row through one
    task (`repartition(1)`), fetched whole by the driver (`toLocalIterator`)."""
    rows = 0
    with open(local_file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", *[f"pc_{i}" for i in range(1, k + 1)]])
        for row in frame.repartition(1).sortWithinPartitions("split", "label", "path").toLocalIterator():
            writer.writerow([row.path, row.label, row.split, *(format(v, ".9g") for v in row.pcs)])
            rows += 1
    return rows


TRICKY_NAMES = ["a, b", 'say "cheese"', " lead and trail ", "Pomme dorée", "梨", "🍎", "semi;colon", "tab\tx", ""]
SPECIAL_NUMBERS = [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1e300, 123456789012.0, 1e-5]


def tricky_rows(count: int, k: int) -> list:
    rng = random.Random(11)
    labels = ["Apple Red 1", "Pear, Williams", 'Cherry "Wax"', "Kiwi"]
    rows = []
    for i in range(count):
        split = rng.choice(["Training", "Test"])
        label = rng.choice(labels)
        name = f"{rng.choice(TRICKY_NAMES)}{i}.jpg"
        pcs = [rng.uniform(-50, 50) for _ in range(k)]
        if i % 10 == 0:
            pcs[i % k] = SPECIAL_NUMBERS[(i // 10) % len(SPECIAL_NUMBERS)]
        rows.append((f"s3://b/images/{split}/{label}/{name}", label, split, pcs))
    rng.shuffle(rows)
    return rows


def records(data: bytes) -> int:
    return sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@contextlib.contextmanager
def result_size_cap(spark, cap: str):
    """spark.driver.maxResultSize, on the running context, for the jobs started meanwhile: what one
    stage's tasks together may return to the driver. The earlier writer's funnel was exactly that:
    every row as one task's result. (A TaskSetManager reads the setting when it is made; SparkConf
    is not changed at run time otherwise, hence the JVM's own object.)

    Meanwhile Spark samples 20 keys per range (3x oversampled) to place the ranges' bounds, as
    its RDD API does, not 100 (`rangeExchange.sampleSizePerPartition`, SQL's default): the
    sample is returned to the driver too, and at this scale 100 would be most of the rows."""
    conf = spark.sparkContext._jsc.sc().conf()
    previous = conf.get("spark.driver.maxResultSize", "1g")
    sample = "spark.sql.execution.rangeExchange.sampleSizePerPartition"
    previous_sample = spark.conf.get(sample)
    conf.set("spark.driver.maxResultSize", cap)
    spark.conf.set(sample, "20")
    try:
        yield
    finally:
        conf.set("spark.driver.maxResultSize", previous)
        spark.conf.set(sample, previous_sample)


def test_the_csv_is_written_by_several_tasks_none_holding_every_row(spark, tmp_path, monkeypatch):
    """3,000 rows in 5 partitions, written with parts of ~250 KB (a big CSV at small scale): the
    file is joined from 4 or more ranges (parts), none holding every row, no stage returns more
    than 256 KB to the driver (the earlier writer's one task returns every row, ~1 MB, and fails
    there), and the file is the earlier writer's, byte for byte: the csv module's quoting of
    commas, quotes, spaces, tabs, accents and non-ASCII in paths and labels, and 'nan', 'inf',
    '-inf', '-0' as `format(v, '.9g')` writes them."""
    k, rows = 24, tricky_rows(3000, 24)
    frame = spark.createDataFrame(rows, "path string, label string, split string, pcs array<double>").repartition(5)
    assert reference_csv(frame, k, str(tmp_path / "reference.csv")) == len(rows)
    reference = (tmp_path / "reference.csv").read_bytes()
    assert b'\r\n"s3://b/images/' in reference and b'""cheese""' in reference  # quoted paths
    assert b",nan," in reference and b",-inf" in reference and b",-0," in reference

    joined = []  # (uri, size, records) of each part joined, in order
    concatenate = Storage.concatenate

    def spy(self, target, parts, head=b""):
        joined.extend((uri, size, records(self.read_bytes(uri))) for uri, size in parts)
        return concatenate(self, target, parts, head)

    monkeypatch.setattr(Storage, "concatenate", spy, raising=False)
    monkeypatch.setattr(csv_table, "PART_BYTES", 250_000, raising=False)
    (tmp_path / "out").mkdir()
    with result_size_cap(spark, "256k"):
        with pytest.raises(Exception, match="maxResultSize"):  # the cap catches a funnel
            reference_csv(frame, k, str(tmp_path / "capped.csv"))
        assert csv_table.write_csv(frame, k, str(tmp_path / "out" / "pca_features.csv")) == len(rows)

    assert (tmp_path / "out" / "pca_features.csv").read_bytes() == reference
    assert len(joined) >= 4, joined
    assert max(count for _, _, count in joined) < len(rows) and sum(count for _, _, count in joined) == len(rows)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pca_features.csv"]  # the parts deleted
