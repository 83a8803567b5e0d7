"""Spark's Python workers keep their zip importers' directories between tasks
(`python_workers.keep_zip_directories`): in a fresh interpreter, and in the real local Spark's
workers, where PySpark calls `importlib.invalidate_caches()` before every task."""

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="Python 3.12+ zip importers re-read their archives lazily themselves"
)

COUNT_READS = """
import zipimport
READS = []
_read = zipimport._read_directory
def _counting(archive):
    READS.append(archive)
    return _read(archive)
zipimport._read_directory = _counting
"""


def test_an_unchanged_archive_is_not_read_again_and_a_changed_one_is(tmp_path):
    """In a fresh interpreter: a module imported from a zip; after the first invalidation, the
    next ones read no directory; a rewritten archive is read again and its new module imports."""
    script = COUNT_READS + textwrap.dedent(
        f"""
        import importlib, json, sys, zipfile
        from fruits_assets.python_workers import keep_zip_directories
        archive = {str(tmp_path / "modules.zip")!r}
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("zipped_one.py", "VALUE = 1\\n")
        sys.path.insert(0, archive)
        import zipped_one
        installed = keep_zip_directories()
        importlib.invalidate_caches()  # the first: each importer reads once and notes the archive's stamp
        READS.clear()
        importlib.invalidate_caches()
        importlib.invalidate_caches()
        unchanged = len(READS)
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("zipped_one.py", "VALUE = 1\\n")
            z.writestr("zipped_two.py", "VALUE = 2\\n")
        importlib.invalidate_caches()
        changed = len(READS)
        import zipped_two
        print(json.dumps({{"installed": installed, "unchanged": unchanged, "changed": changed,
                           "values": [zipped_one.VALUE, zipped_two.VALUE]}}))
        """
    )
    result = json.loads(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    )
    assert result == {"installed": True, "unchanged": 0, "changed": 1, "values": [1, 2]}


def test_spark_workers_read_no_zip_directory_between_tasks(spark):
    """A real worker of the local Spark: its path holds zip archives (pyspark.zip, py4j's, the
    Spark core jar), and once `on_worker` ran there, invalidating the import caches again, as
    PySpark does before each task, reads none of them."""
    import pandas as pd

    from fruits_assets.python_workers import on_worker

    @on_worker
    def report(batches):
        import importlib
        import sys
        import zipimport

        for _ in batches:
            pass
        zips = {i.archive for i in sys.path_importer_cache.values() if isinstance(i, zipimport.zipimporter)}
        importlib.invalidate_caches()  # as PySpark before a task: importers new since read once
        reads = []
        read = zipimport._read_directory
        zipimport._read_directory = lambda archive: reads.append(archive) or read(archive)
        try:
            importlib.invalidate_caches()
        finally:
            zipimport._read_directory = read
        yield pd.DataFrame({"zips": [len(zips)], "reads": [len(reads)]})

    rows = spark.range(0, 40, numPartitions=4).mapInPandas(report, "zips long, reads long").collect()
    assert len(rows) == 4
    assert all(r.zips > 0 for r in rows), "the workers import from no zip archive: nothing to keep"
    assert [r.reads for r in rows] == [0, 0, 0, 0]
