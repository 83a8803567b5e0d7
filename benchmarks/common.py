"""Shared helpers of the benchmarks: images to run on, a Spark session, and peak-RSS sampling.

Not part of the code location, not run by CI. Run from the repository root with the project's
virtualenv, e.g. `python -m benchmarks.featurize --help`.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BENCH_DIR = Path(os.environ.get("FRUITS_BENCH_DIR", "/tmp/fruits_bench"))
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared/models/mobilenet_v2_1.0_backbone.weights.h5"


def machine() -> str:
    mem_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem_kb / 2**20:.0f} GiB RAM"


def synthetic_images(count: int) -> Path:
    """A folder of `count` synthetic 100x100 JPEGs (8 classes, Training only), cached by count."""
    from fruits_assets.sample_data import CLASSES, generate_sample

    per_class = math.ceil(count / len(CLASSES))
    return generate_sample(BENCH_DIR / f"images_{per_class * len(CLASSES)}", per_class, 0)


def listed_images(root: str | Path, limit: int | None = None):
    from fruits_assets.listing import list_images
    from fruits_assets.storage import Storage

    listed, _ = list_images(Storage(), str(root), 0)
    listed = sorted((f for f in listed if f.reason is None), key=lambda f: f.path)
    return listed[:limit] if limit else listed


def spark_session(cores: int, extra: dict | None = None):
    from pyspark.sql import SparkSession

    from fruits_assets.settings import FruitsSettings
    from fruits_assets.spark import local_config, python_for_workers

    builder = SparkSession.builder
    settings = FruitsSettings(spark_master=f"local[{cores}]").resolve({})
    for key, value in {**local_config(settings), **(extra or {})}.items():
        builder = builder.config(key, value)
    with python_for_workers(sys.executable):  # workers with this interpreter's packages
        spark = builder.config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# -- memory ---------------------------------------------------------------------------------------
def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class PeakRss:
    """Samples, in a thread, the summed RSS of this process's descendants: the Spark driver JVM
    and its Python daemon/workers (the Spark job), and separately this Python process."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_spark = 0
        self.peak_self = 0
        self.peak_workers = 0  # how many processes at once
        self.paused = False  # while True, the Spark tree is not sampled (plain Keras runs then)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            self.peak_self = max(self.peak_self, _rss_bytes(me))
            if not self.paused:
                pids = descendants(me)
                self.peak_spark = max(self.peak_spark, sum(_rss_bytes(p) for p in pids))
                self.peak_workers = max(self.peak_workers, len(pids))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def cpu_seconds(pids) -> float:
    """utime+stime (+ reaped children's) of these processes, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick
