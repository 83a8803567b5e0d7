"""The Spark session of a run: its settings, and the `pyspark` resource that starts it lazily.

Lazily, because in the `emr` deployment the Dagster host only launches steps: the session starts
in the step's process on the cluster, and the host needs neither Spark nor Java.
"""

import contextlib
import os
import sys

import dagster as dg

from fruits_assets.settings import FruitsSettings

# Parquet's codec for every stored asset. snappy, not zstd: on distinct photos (one Spark session,
# 2 cores) zstd took 5.1-7.3 s to write 24,000 arrays of 96 px where snappy took 2.1-2.9 s, and
# 5.4-7.2 s vs 2.3-4.9 s for 6,000 of 224 px; reading was no faster. zstd's files are 7-14%
# smaller (493 vs 532 MB; 546 vs 636 MB). Photo arrays hardly compress (1.3-1.7x with either);
# zstd was chosen on hard-linked copies of the same photos, which it compressed ~3x.
PARQUET_CODEC = "snappy"


def runtime_config(settings: FruitsSettings) -> dict:
    """Settings a running session can take (applied again to a session that outlives a run)."""
    return {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Rows per Arrow batch handed to a Python worker: bounds worker memory (224 px uint8
        # images are 150 KB each, so 10,000 rows, Spark's default, would be 1.5 GB per batch).
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(settings.arrow_batch_rows),
        "spark.sql.session.timeZone": "UTC",
        # Small files (photos of a few KB) are packed by size, not by a 4 MB cost each, so a
        # partition holds about as many files as rows_per_partition asks.
        "spark.sql.files.openCostInBytes": str(64 * 1024),
        "spark.sql.parquet.compression.codec": PARQUET_CODEC,
        # Stored files of at most rows_per_partition rows, so the next stage reads one file per
        # partition (`split_for_work`); a file Spark cannot split by rows (one row group) left
        # the extra partitions empty: raw_images' first run wrote 8 files of ~3,000 rows, read
        # in 97 partitions of which 89 empty, ~0.1 s each.
        "spark.sql.files.maxRecordsPerFile": str(settings.rows_per_partition),
        # Rows per batch of Parquet's vectorized reader (default 4,096): at 150 KB per 224 px
        # image a default batch grows to ~600 MB of heap per task, and two tasks ran the 4 GB
        # driver out of heap at 24,000 images ("Cannot reserve additional contiguous bytes in the
        # vectorized reader"). 256 rows = 38 MB; the feature rows (5 KB) hardly notice.
        "spark.sql.parquet.columnarReaderBatchSize": "256",
    }


def local_config(settings: FruitsSettings) -> dict:
    """Settings of a session on this machine (the `local` deployment, and tests)."""
    return {
        "spark.master": settings.spark_master,
        "spark.app.name": "fruits",
        "spark.python.worker.reuse": "true",  # keeps each worker's model across tasks
        "spark.sql.shuffle.partitions": "8",
        "spark.driver.memory": "4g",
        # The JVM compiles with C1 only (no C2): a run's JVM lives a minute or a few, mostly
        # moving bytes between Parquet and the Python workers, which do the work; C2's compiler
        # threads took cores from them. 6,000 photos at 224 px from the CLI, warm, alternating on
        # 2 cores (2026-12-05): 65.0 and 68.6 s with C1 only, 76.8 and 71.5 s without.
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
        "spark.ui.showConsoleProgress": "false",
        # The driver lists a stored version's files itself, not in a Spark job once they are
        # 32 or more (an incremental version inherits files of earlier ones): on this machine
        # a job costs ~0.3 s for what a few file-system calls do. On EMR the default stays:
        # there the job lists S3 objects in parallel, on the workers.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        **runtime_config(settings),
    }


def cluster_config(settings: FruitsSettings) -> dict:
    """Settings of a step's session on EMR, on top of the cluster's spark-defaults
    (emr_resources/cluster.yaml) and what spark-submit gives (master, deploy mode, Python)."""
    return {"spark.python.worker.reuse": "true", **runtime_config(settings)}


@contextlib.contextmanager
def python_for_workers(executable: str):
    """PySpark starts local Python workers with $PYSPARK_PYTHON (read once, when the context
    starts), else `python3` from the PATH, which may lack TensorFlow: this interpreter instead,
    for the creation only."""
    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = previous or executable
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYSPARK_PYTHON", None)


def local_session(settings: FruitsSettings):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in local_config(settings).items():
        builder = builder.config(key, value)
    with python_for_workers(sys.executable):
        return builder.getOrCreate()


@dg.resource(required_resource_keys={"settings"})
def spark_resource(context: dg.InitResourceContext):
    """The `pyspark` resource: the run's Spark session (its settings), started on first use."""
    return SparkResource(context.resources.settings)


class SparkResource:
    """The run's Spark session, started on first use (a step that needs no Spark starts none)."""

    def __init__(self, settings: FruitsSettings):
        self.settings = settings
        self._session = None

    @property
    def spark_session(self):
        # getOrCreate applies the builder's settings to a session that already runs (one that
        # outlives a run, in `dagster dev` or a test): the runtime ones are set once, here.
        if self._session is None:
            from pyspark.sql import SparkSession

            settings = self.settings.resolved()
            if settings.deployment == "local":
                self._session = local_session(settings)
            else:  # a step on the cluster: spark-submit made the context
                builder = SparkSession.builder
                for key, value in cluster_config(settings).items():
                    builder = builder.config(key, value)
                self._session = builder.getOrCreate()
        return self._session

    @property
    def started(self) -> bool:
        return self._session is not None
