"""The errors users see, and the two places that turn low-level failures into them."""

from __future__ import annotations

import contextlib
import functools
import inspect


class FruitsConfigError(ValueError):
    """A configuration or input problem the user must fix; its message says how. Never retried."""


class StorageUnreachableError(ConnectionError):
    """S3 cannot be reached (endpoint down, wrong or unroutable).

    Not a FruitsConfigError: an outage is often transient, so the step's RetryPolicy retries it.
    """


@contextlib.contextmanager
def config_errors_fail_once():
    """A FruitsConfigError fails the step at once, with its message as the headline: retrying
    cannot fix it."""
    import dagster as dg

    try:
        yield
    except FruitsConfigError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None


def config_errors_not_retried(fn):
    """Decorator form of `config_errors_fail_once`, for assets and checks (plain or generator):
    a FruitsConfigError fails the step without a retry, with its message as the headline."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            with config_errors_fail_once():
                yield from fn(*args, **kwargs)

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with config_errors_fail_once():
            return fn(*args, **kwargs)

    return wrapper


def is_missing_filesystem(error: BaseException) -> bool:
    """Whether Spark failed because it has no file system for a URI's scheme (s3:// without a
    Hadoop S3 connector, as with pyspark from PyPI)."""
    text = str(error)
    return "No FileSystem for scheme" in text or "UnsupportedFileSystemException" in text


@contextlib.contextmanager
def spark_filesystem_errors(path: str):
    """Turn a missing Hadoop S3 connector into one clear error instead of a Py4J stack trace."""
    try:
        yield
    except Exception as error:
        if is_missing_filesystem(error):
            scheme = path.split("://", 1)[0]
            raise FruitsConfigError(
                f"This Spark cannot read or write {scheme}:// paths ({path}): pyspark from PyPI has "
                "no Hadoop S3 connector. Run on EMR (FRUITS_DEPLOYMENT=emr, EMRFS handles s3://), "
                "use a local FRUITS_OUTPUT_ROOT, or add the connector (hadoop-aws and the AWS SDK "
                "bundle jars in spark.jars, fs.s3.impl=org.apache.hadoop.fs.s3a.S3AFileSystem)."
            ) from None
        raise
