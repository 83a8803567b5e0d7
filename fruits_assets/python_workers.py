"""What each Python function that Spark runs in its Python workers does first (`on_worker`)."""

from __future__ import annotations

import functools
import os
import sys
import zipimport


def keep_zip_directories() -> bool:
    """Make this process's zip importers re-read an archive's directory only when it changed.

    PySpark's worker calls `importlib.invalidate_caches()` before every task. On Python 3.10 and
    3.11 that makes every zip importer re-read its archive's whole directory, in Python
    (CPython gh-103200, made lazy in 3.12). A Spark worker imports from pyspark.zip (one importer
    per package it imported from it), py4j's zip and Spark's core jar, all on its PYTHONPATH:
    here that took ~107 ms per task, before the task's own work. 97 tasks that did nothing took
    10.9-19.5 s on 2 cores; with this, 3.5-4.2 s. The same holds on EMR, whose workers run
    Python 3.11 with the same archives on their path.

    An importer now re-reads its archive when its modification time or size changed (a zip
    added again under the same name), as before; otherwise it keeps the directory it read.
    Returns whether this process's importers now behave so (False where Python's own are lazy
    or have no such method). Idempotent.
    """
    invalidate = getattr(zipimport.zipimporter, "invalidate_caches", None)
    if invalidate is None or sys.version_info >= (3, 12):
        return False
    if getattr(invalidate, "keeps_unchanged_directories", False):
        return True

    def invalidate_caches(self):
        try:
            status = os.stat(self.archive)
            stamp = (status.st_mtime_ns, status.st_size)
        except OSError:
            stamp = None
        if stamp is not None and getattr(self, "_read_at_stamp", None) == stamp:
            return
        invalidate(self)
        self._read_at_stamp = stamp

    invalidate_caches.keeps_unchanged_directories = True
    zipimport.zipimporter.invalidate_caches = invalidate_caches
    return True


def on_worker(batch_function):
    """Decorate a function of batches that Spark runs in its Python workers (`mapInPandas`):
    the worker is set up (`keep_zip_directories`) before the first batch. A worker serves many
    tasks, so only its first task pays the cost this saves."""

    @functools.wraps(batch_function)
    def run(batches):
        keep_zip_directories()
        yield from batch_function(batches)

    return run
