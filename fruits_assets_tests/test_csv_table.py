"""Joining files into one (Storage.concatenate), locally and on a real S3 API (moto's server):
parts copied by S3, parts too small for that gathered here, one PutObject for a small file,
nothing left behind when it fails."""

import random

import pytest

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
