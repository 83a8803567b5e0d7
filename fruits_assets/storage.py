"""Bytes in and out of a local folder or S3 (through boto3), with one API for both.

Used by the driver (listing images, weights, models, CSV) and by Spark's Python workers (reading
image bytes), so a `Storage` is small and picklable: its boto3 client is created lazily per process.
Spark's own reads and writes (Parquet) do not go through here: they use Spark's file systems
(local, or EMRFS `s3://` on EMR).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fruits_assets.constants import EU_REGION
from fruits_assets.errors import FruitsConfigError, StorageUnreachableError

# S3's multipart limits: every part but the last at least 5 MiB; a part copied from an object at
# most 5 GiB; at most 10,000 parts.
S3_MIN_PART = 5 * 1024 * 1024
S3_MAX_COPY_PART = 5 * 1024**3


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://", "s3n://"))


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise FruitsConfigError(f"{uri!r} names no bucket: use s3://bucket/prefix.")
    return bucket, key


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


@dataclass
class Storage:
    """Read, write, list and delete under local paths or `s3://` URIs.

    Every S3 object written carries server-side encryption: SSE-S3 (AES256) by default, SSE-KMS
    when `kms_key_id` is set.
    """

    region_name: str = EU_REGION
    endpoint_url: str | None = None
    kms_key_id: str | None = None
    _client: object = field(default=None, repr=False, compare=False)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_client"] = None  # boto3 clients do not pickle; each process makes its own
        return state

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                region_name=self.region_name,
                endpoint_url=self.endpoint_url or None,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._client

    def encryption_args(self) -> dict:
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    # -- reading -----------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return Path(uri).read_bytes()

    def read_range(self, uri: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file (fewer if it is shorter)."""
        if end <= start:
            return b""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"].read()
        with open(uri, "rb") as handle:
            handle.seek(start)
            return handle.read(end - start)

    def file_sizes(self, uri: str) -> list[tuple[str, int]]:
        """(name, size in bytes) of each file directly in folder `uri`, by name."""
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            prefix = prefix.rstrip("/") + "/"
            return sorted(
                (obj["Key"][len(prefix) :], obj["Size"])
                for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=prefix, Delimiter="/"
                )
                for obj in page.get("Contents", [])
            )
        path = Path(uri)
        return sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file()) if path.is_dir() else []

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            try:
                self.client.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return Path(uri).exists()

    def list_versions(self, root: str) -> Iterator[tuple[str, str]]:
        """Every file under `root`, recursively, hidden ones included, as full URIs/paths, with a
        cheap version marker: size and ETag on S3, size and modification time locally (what a
        watcher compares; `identity` says what the pipeline compares)."""
        if is_s3(root):
            bucket, prefix = split_s3(root)
            prefix = prefix.rstrip("/") + "/" if prefix else ""
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if not obj["Key"].endswith("/"):
                        yield f"s3://{bucket}/{obj['Key']}", f"{obj['Size']}:{obj['ETag']}"
            return
        for folder, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                    yield path, f"{stat.st_size}:{stat.st_mtime_ns}"
                except OSError:  # a dangling link: listed, quarantined by the pipeline
                    yield path, "unreadable"

    def identity(self, uri: str, version: str, content: bool) -> str | None:
        """What says whether a listed file changed since an earlier run: its size and ETag on S3
        (from the listing); locally, its size and sha256 (the file is read here) when `content`
        (an image), else its size and modification time. None when it cannot be read."""
        if version == "unreadable":
            return None
        if is_s3(uri):
            return f"etag:{version}"
        if not content:
            return f"stat:{version}"
        try:
            data = Path(uri).read_bytes()
        except OSError:
            return None
        return f"sha256:{len(data)}:{hashlib.sha256(data).hexdigest()}"

    def root_exists(self, root: str) -> bool:
        if is_s3(root):
            bucket, prefix = split_s3(root)
            prefix = prefix.rstrip("/") + "/" if prefix else ""
            from botocore.exceptions import EndpointConnectionError

            try:
                answer = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            except EndpointConnectionError as error:  # the first S3 call of a run: say what to check
                raise StorageUnreachableError(
                    f"Cannot reach S3 at {self.client.meta.endpoint_url} to read {root!r}: {error}. "
                    "Check the endpoint (FRUITS_S3_ENDPOINT_URL or AWS_ENDPOINT_URL) and the "
                    "network; the step retries in case the outage is transient."
                ) from error
            return answer.get("KeyCount", 0) > 0
        return Path(root).is_dir()

    # -- writing -----------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write atomically: readers see the old object or the new one, never half of one."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **self.encryption_args())
            return
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=".tmp-") as tmp:
            tmp.write(data)
        os.replace(tmp.name, path)

    def upload_file(self, local_path: str, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.client.upload_file(local_path, bucket, key, ExtraArgs=self.encryption_args())
            return
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{uri}.tmp-{os.getpid()}"
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, uri)

    def concatenate(self, target: str, sources: list[tuple[str, int]], head: bytes = b"") -> int:
        """Write `target` as `head` followed by the files `sources` ((uri, size), in order; on the
        same store as `target`), streaming: the bytes are copied, never held whole. Atomic:
        readers see the old `target` or the new one. Returns its size.

        Locally, one file copied after the other. On S3, one multipart upload whose parts are
        copied server-side from the sources (UploadPartCopy), but for what S3's 5 MiB minimum
        part size forbids copying: `head`, sources smaller than a part and the ends of others are
        gathered on this machine into parts of 5 MiB (at most one such buffer at a time). A
        result smaller than one part is one PutObject."""
        if is_s3(target):
            return self._concatenate_s3(target, sources, head)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=".tmp-") as out:
            try:
                out.write(head)
                for source, _size in sources:
                    with open(source, "rb") as part:
                        shutil.copyfileobj(part, out, 1024 * 1024)
                size = out.tell()
            except BaseException:
                os.unlink(out.name)
                raise
        os.replace(out.name, path)
        return size

    def _concatenate_s3(self, target: str, sources: list[tuple[str, int]], head: bytes) -> int:
        bucket, key = split_s3(target)
        client = self.client
        buffer = bytearray(head)
        parts: list[dict] = []
        upload_id = None
        total = len(head)

        def next_part() -> tuple[int, str]:
            nonlocal upload_id
            if upload_id is None:
                upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **self.encryption_args())["UploadId"]
            return len(parts) + 1, upload_id

        def flush() -> None:
            number, upload = next_part()
            answer = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=bytes(buffer))
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            buffer.clear()

        try:
            for source, size in sources:
                source_bucket, source_key = split_s3(source)
                total += size
                start = 0
                while start < size:
                    if not buffer and size - start >= S3_MIN_PART:  # a whole part, copied by S3
                        end = min(size, start + S3_MAX_COPY_PART)
                        number, upload = next_part()
                        answer = client.upload_part_copy(
                            Bucket=bucket,
                            Key=key,
                            UploadId=upload,
                            PartNumber=number,
                            CopySource={"Bucket": source_bucket, "Key": source_key},
                            CopySourceRange=f"bytes={start}-{end - 1}",
                        )
                        parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
                    else:  # too small to be a part: gathered here until it makes one
                        end = min(size, start + S3_MIN_PART - len(buffer))
                        buffer += self.read_range(source, start, end)
                        if len(buffer) >= S3_MIN_PART:
                            flush()
                    start = end
            if upload_id is None:
                client.put_object(Bucket=bucket, Key=key, Body=bytes(buffer), **self.encryption_args())
                return total
            if buffer:
                flush()  # the last part may be smaller
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            if upload_id is not None:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return total

    def delete_tree(self, uri: str) -> None:
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            prefix = prefix.rstrip("/") + "/"
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
            return
        shutil.rmtree(uri, ignore_errors=True)

    def list_children(self, uri: str) -> list[str]:
        """Names of the immediate sub-folders (or S3 common prefixes) of `uri`."""
        return self._level(uri)[0]

    def list_files_in(self, uri: str) -> list[str]:
        """Names of the files directly in folder `uri` (S3: the keys right under that prefix)."""
        return self._level(uri)[1]

    def _level(self, uri: str) -> tuple[list[str], list[str]]:
        """(sub-folder names, file names) directly in `uri`."""
        if is_s3(uri):
            bucket, prefix = split_s3(uri)
            prefix = prefix.rstrip("/") + "/"
            folders, files = [], []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix, Delimiter="/"
            ):
                folders += [p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
                files += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
            return folders, files
        path = Path(uri)
        if not path.is_dir():
            return [], []
        entries = sorted(path.iterdir())
        return [p.name for p in entries if p.is_dir()], [p.name for p in entries if p.is_file()]

    def delete(self, uri: str) -> None:
        """Delete one file (nothing if it is not there)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.client.delete_object(Bucket=bucket, Key=key)
            return
        Path(uri).unlink(missing_ok=True)

    def copy(self, source: str, target: str) -> None:
        """Replace `target` with a copy of `source`, atomically (readers see one or the other)."""
        if is_s3(source):
            bucket, key = split_s3(target)
            source_bucket, source_key = split_s3(source)
            self.client.copy_object(
                Bucket=bucket,
                Key=key,
                CopySource={"Bucket": source_bucket, "Key": source_key},
                **self.encryption_args(),
            )
            return
        self.upload_file(source, target)

    # -- conditional writes (S3), for the writer lock ------------------------------------------
    def put_if_absent(self, uri: str, data: bytes) -> str | None:
        """Create `uri` unless it exists (S3 If-None-Match); its ETag, or None if it existed."""
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", **self.encryption_args())[
                "ETag"
            ]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise

    def replace_if_match(self, uri: str, data: bytes, etag: str) -> str | None:
        """Replace `uri` if it is still version `etag` (S3 If-Match); the new ETag, or None."""
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return self.client.put_object(Bucket=bucket, Key=key, Body=data, IfMatch=etag, **self.encryption_args())[
                "ETag"
            ]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "NoSuchKey",
                "404",
            ):
                return None
            raise

    def stale_etag(self, uri: str, seconds: float) -> str | None:
        """The ETag of `uri` if it was last written more than `seconds` ago by S3's own clock
        (its LastModified against the Date of the answer: no trust in this machine's clock)."""
        from email.utils import parsedate_to_datetime

        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except ClientError:
            return None
        server_now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (server_now - head["LastModified"]).total_seconds()
        return head["ETag"] if age > seconds else None

    def delete_if_match(self, uri: str, etag: str) -> None:
        """Delete `uri` if it is still version `etag` (a lease this process still holds)."""
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            if self.client.head_object(Bucket=bucket, Key=key)["ETag"] == etag:
                self.client.delete_object(Bucket=bucket, Key=key)
        except ClientError:
            pass
