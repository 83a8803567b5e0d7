"""Feature-extraction throughput: the Spark path against plain single-process Keras, in one run.

Both paths start from the same JPEG files and include reading, decoding and resizing:
- plain Keras: read each file, `images.decode_image`, `preprocess_input`, `model.predict` on batches,
  in this process (TensorFlow with its default threads = all cores);
- Spark (local[cores]): `raw_images_frame` -> `preprocess_frame` -> Parquet (uint8 bytes, as the
  preprocessed_images asset stores them) -> read back -> `featurize_frame` -> Parquet.
Spark runs once on a few images first ("cold": JVM already up, Python workers started and the model
built in each), then `--repeat` timed runs on warm workers: the steady state, as plain Keras is
timed with its model already built. The cold full-size first run is reported too.

    python -m benchmarks.featurize --images 1000 --sizes 224 96 --weights ../shared/models/...h5
    python -m benchmarks.featurize --images 1000 4000 --sizes 224   # scaling: one process per N
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import (
    BENCH_DIR,
    SHARED_WEIGHTS,
    PeakRss,
    _rss_bytes,
    cpu_seconds,
    descendants,
    listed_images,
    machine,
    spark_session,
    synthetic_images,
)

MB = 2**20


def plain_keras(listed, weights, size: int, batch_size: int, chunk: int = 256):
    """Single-process Keras: files -> decode+resize -> predict. Returns (features by path, seconds)."""
    from keras.applications.mobilenet_v2 import preprocess_input

    from fruits_assets.featurize import load_model
    from fruits_assets.images import decode_image

    model = load_model(weights, size)
    model.predict(np.zeros((batch_size, size, size, 3), np.float32), batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    out = []
    for start in range(0, len(listed), chunk):
        files = listed[start : start + chunk]
        batch = np.stack([decode_image(open(f.path, "rb").read(), size) for f in files])
        out.append(model.predict(preprocess_input(batch.astype(np.float32)), batch_size=batch_size, verbose=0))
    seconds = time.perf_counter() - started
    features = np.concatenate(out)
    return {f.path: features[i] for i, f in enumerate(listed)}, seconds


REPARTITION_ALWAYS = "--repartition-always" in sys.argv
STAGES: dict[str, float] = {}  # seconds of the last spark_path's two halves


def spark_path(spark, listed, weights, size: int, threads: int, batch_size: int, work: str) -> float:
    """Files -> raw bytes -> decode+resize -> Parquet -> read -> MobileNetV2 -> Parquet; seconds."""
    from pyspark.sql import functions as F

    from fruits_assets.spark_jobs import (
        balanced_for_featurization,
        featurize_frame,
        partitions_for,
        preprocess_frame,
        raw_images_frame,
    )
    from fruits_assets.storage import Storage

    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    raw = raw_images_frame(spark, listed, Storage())
    decoded = preprocess_frame(raw, size).where(F.col("reason").isNull())
    decoded.select("path", "split", "label", "image").write.parquet(f"{work}/preprocessed")
    STAGES["decode_write"] = time.perf_counter() - started
    stored = spark.read.parquet(f"{work}/preprocessed")
    rows = stored.count()
    # as the image_features asset does:
    if REPARTITION_ALWAYS:  # the earlier behaviour, for comparison
        stored = stored.repartition(partitions_for(rows, spark))
    else:
        stored = balanced_for_featurization(stored, rows, spark)
    features = featurize_frame(spark, stored, weights, size, threads, batch_size)
    features.write.parquet(f"{work}/features")
    STAGES["featurize_write"] = time.perf_counter() - started - STAGES["decode_write"]
    return time.perf_counter() - started


def worker_model_builds(spark) -> dict[int, int]:
    """{python worker pid: models it built}, asked of featurization's own worker pool."""
    import pandas as pd

    from fruits_assets.spark_jobs import FEATURIZE_WORKER_ENV, _worker_pool

    n = spark.sparkContext.defaultParallelism * 4

    def probe(batches):
        from fruits_assets.featurize import MODEL_BUILDS

        for _ in batches:
            pass
        yield pd.DataFrame({"pid": [os.getpid()], "builds": [MODEL_BUILDS["count"]]})

    with _worker_pool(spark.sparkContext, *FEATURIZE_WORKER_ENV):
        frame = spark.range(n).repartition(n).mapInPandas(probe, "pid long, builds long")
    return {r.pid: r.builds for r in frame.distinct().collect()}


def process_table() -> list[str]:
    """RSS and command of each process of the Spark job, largest first."""
    rows = []
    for pid in descendants(os.getpid()):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:60]
        except OSError:
            continue
        rows.append((_rss_bytes(pid), f"{pid} {_rss_bytes(pid) // MB} MB {cmd}"))
    return [text for _, text in sorted(rows, reverse=True)]


def load_average() -> str:
    return open("/proc/loadavg").read().split(" ")[0]


def run_one(args, count: int) -> dict:
    from fruits_assets.featurize import resolve_weights
    from fruits_assets.storage import Storage

    root = args.images_root or synthetic_images(count)
    listed = listed_images(root, None if args.images_root else count)
    results = {"images": len(listed), "machine": machine(), "cores": args.cores, "sizes": {}}
    spark = spark_session(args.cores, dict(c.split("=", 1) for c in args.conf))
    task_cpus = int(spark.conf.get("spark.task.cpus", "1"))
    threads = args.tf_threads or task_cpus
    results.update(tf_threads=threads, task_cpus=task_cpus, batch_size=args.batch_size,
                   conf=args.conf, arrow_rows=spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
    work = tempfile.mkdtemp(prefix="featurize_", dir=BENCH_DIR)
    for size in args.sizes:
        weights = resolve_weights(args.weights, size, Storage())
        row: dict = {"load_average_before": load_average()}
        # warm-up on a few images: start the workers and build the model in each
        with PeakRss() as cold_rss:
            row["spark_warmup_seconds"] = round(
                spark_path(spark, listed[: 16 * args.cores], weights, size, threads, args.batch_size, work), 2
            )
        keras_times, spark_times, keras_cpu, spark_cpu = [], [], [], []
        with PeakRss() as rss:
            # interleaved, so that a load from outside hits both paths alike
            for _ in range(args.repeat):
                if not args.spark_only:
                    rss.paused = True
                    cpu_before = cpu_seconds([os.getpid()])
                    reference, seconds = plain_keras(listed, weights, size, args.batch_size)
                    keras_times.append(seconds)
                    keras_cpu.append(cpu_seconds([os.getpid()]) - cpu_before)
                rss.paused = False
                cpu_before = cpu_seconds(descendants(os.getpid()))
                jvm = [p for p in descendants(os.getpid()) if b"java" in open(f"/proc/{p}/cmdline", "rb").read()]
                jvm_before = cpu_seconds(jvm)
                spark_times.append(spark_path(spark, listed, weights, size, threads, args.batch_size, work))
                spark_cpu.append(cpu_seconds(descendants(os.getpid())) - cpu_before)
                row.setdefault("spark_jvm_cpu_seconds", []).append(round(cpu_seconds(jvm) - jvm_before, 1))
                row.setdefault("spark_stage_seconds", []).append({k: round(v, 2) for k, v in STAGES.items()})
                rss.paused = True
        row["load_average_after"] = load_average()
        best = min(spark_times)
        row["spark_seconds_each"] = [round(t, 2) for t in spark_times]
        row["spark_seconds"] = round(best, 2)
        row["spark_ips"] = round(len(listed) / best, 1)
        if keras_times:
            row["keras_seconds_each"] = [round(t, 2) for t in keras_times]
            row["keras_ips"] = round(len(listed) / min(keras_times), 1)
            row["ratio"] = round(row["spark_ips"] / row["keras_ips"], 3)
            row["ratio_per_pair"] = [round(k / s_, 3) for k, s_ in zip(keras_times, spark_times)]
        # CPU seconds per image: how much work each path does, whatever else runs on the machine
        row["spark_cpu_seconds_each"] = [round(c, 1) for c in spark_cpu]
        if keras_cpu:
            row["keras_cpu_seconds_each"] = [round(c, 1) for c in keras_cpu]
            row["cpu_ratio"] = round(min(keras_cpu) / min(spark_cpu), 3)
        row["peak_rss_spark_mb"] = round(max(rss.peak_spark, cold_rss.peak_spark) / MB)
        row["peak_rss_keras_process_mb"] = round(max(rss.peak_self, cold_rss.peak_self) / MB)
        row["peak_processes"] = max(rss.peak_workers, cold_rss.peak_workers)
        row["processes_after"] = process_table()
        row["model_builds_per_worker"] = worker_model_builds(spark)
        if not args.spark_only:
            got = spark.read.parquet(f"{work}/features").select("path", "features").toPandas()
            diffs = [np.max(np.abs(np.asarray(v, np.float32) - reference[p])) for p, v in zip(got["path"], got["features"])]
            row["max_abs_diff_vs_keras"] = float(max(diffs))
            row["rows_compared"] = len(diffs)
        results["sizes"][size] = row
        print(json.dumps({size: row}), file=sys.stderr, flush=True)
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000], help="N (several: one process each)")
    parser.add_argument("--images-root", help="use this Fruits-360 folder instead of synthetic images")
    parser.add_argument("--sizes", "--size", type=int, nargs="+", default=[224])
    parser.add_argument("--cores", type=int, default=2, help="Spark local[cores]")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per path (best is kept)")
    parser.add_argument("--batch-size", type=int,
                        default=int(os.environ.get("FRUITS_PREDICT_BATCH_SIZE", "0")) or None)
    parser.add_argument("--tf-threads", type=int, default=0, help="0 = spark.task.cpus")
    parser.add_argument("--conf", action="append", default=[], help="extra Spark conf key=value")
    parser.add_argument("--spark-only", action="store_true")
    parser.add_argument("--repartition-always", action="store_true",
                        help="always shuffle before featurization (the behaviour before balanced_for_featurization)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        from fruits_assets.assets import FeaturesConfig

        args.batch_size = FeaturesConfig().predict_batch_size
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    if len(args.images) == 1:
        results = [run_one(args, args.images[0])]
    else:  # one fresh process per N: peak RSS of each is its own
        results = []
        for count in args.images:
            with tempfile.NamedTemporaryFile(suffix=".json", dir=BENCH_DIR) as out:
                child = [a for a in (argv or sys.argv[1:])]
                i = child.index("--images")
                j = i + 1
                while j < len(child) and not child[j].startswith("--"):
                    j += 1
                child[i:j] = ["--images", str(count), "--json", out.name]
                subprocess.run([sys.executable, "-m", "benchmarks.featurize", *child], check=True)
                results.append(json.load(open(out.name)))
    if args.json and len(args.images) == 1:
        with open(args.json, "w") as handle:
            json.dump(results[0], handle)
    print(f"\nmachine: {results[0]['machine']}; {time.strftime('%Y-%m-%d')}")
    print("| images | size | keras img/s | spark img/s | ratio | ratio per pair | keras CPU s / spark CPU s | spark s (runs) | warm-up s | peak RSS spark MB | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for size, row in r["sizes"].items():
            print(f"| {r['images']} | {size} | {row.get('keras_ips', '-')} | {row['spark_ips']} | "
                  f"{row.get('ratio', '-')} | {row.get('ratio_per_pair', '-')} | {row.get('cpu_ratio', '-')} | {row['spark_seconds_each']} | {row['spark_warmup_seconds']} | "
                  f"{row['peak_rss_spark_mb']} | {row.get('max_abs_diff_vs_keras', '-')} |")
    print(f"tf_threads={results[0]['tf_threads']} task_cpus={results[0]['task_cpus']} "
          f"batch={results[0]['batch_size']} arrow_rows={results[0]['arrow_rows']} conf={results[0]['conf']}")


if __name__ == "__main__":
    main()
