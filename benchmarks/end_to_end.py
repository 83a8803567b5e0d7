"""End to end: wall time of materializing every asset on N synthetic images, on local Spark, with
each step's duration from the run's event log (STEP_START -> STEP_SUCCESS) and the assets' own
timing metadata.

The clock includes everything a user waits for in one run: the Spark session's start, the Python
workers' start, TensorFlow's import and the model build in each featurization worker.

    python -m benchmarks.end_to_end --images 1000 --size 224 --weights ../shared/models/...h5
"""

from __future__ import annotations

import argparse
import tempfile
import time

from benchmarks.common import BENCH_DIR, SHARED_WEIGHTS, PeakRss, machine


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--images-root", help="a Fruits-360 folder instead of synthetic images")
    args = parser.parse_args(argv)

    import dagster as dg

    from fruits_assets.definitions import all_assets
    from fruits_assets.resources import local_resources
    from fruits_assets.sample_data import CLASSES, generate_sample

    root = args.images_root
    if not root:  # 3/4 Training, 1/4 Test, as Fruits-360 roughly is
        per_class = -(-args.images // len(CLASSES))
        test = per_class // 4
        root = str(generate_sample(BENCH_DIR / f"e2e_{per_class}_{test}", per_class - test, test))
    run_config = {
        "ops": {
            "raw_images": {"config": {"images_root": root}},
            "preprocessed_images": {"config": {"image_size": args.size}},
            "image_features": {"config": {"weights": args.weights}},
        }
    }
    instance = dg.DagsterInstance.ephemeral()
    with tempfile.TemporaryDirectory(dir=BENCH_DIR) as output_root, PeakRss() as rss:
        started = time.perf_counter()
        result = dg.materialize(
            all_assets,
            resources=local_resources(output_root=output_root, master=f"local[{args.cores}]"),
            run_config=run_config,
            instance=instance,
        )
        wall = time.perf_counter() - started
        assert result.success
        starts, steps, metadata = {}, {}, {}
        for entry in instance.all_logs(result.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = entry.timestamp
            elif event.event_type_value == "STEP_SUCCESS":
                steps[event.step_key] = entry.timestamp - starts[event.step_key]
            elif event.event_type_value == "ASSET_MATERIALIZATION":
                materialization = event.event_specific_data.materialization
                metadata[materialization.asset_key.to_user_string()] = {
                    k: v.value for k, v in materialization.metadata.items()
                    if k in ("rows", "compute_seconds", "setup_seconds", "fit_seconds", "csv_rows", "k")
                }
        csv_rows = metadata.get("pca_features_csv", {}).get("csv_rows")
    try:
        from pyspark.sql import SparkSession

        SparkSession.builder.getOrCreate().stop()
    except Exception:
        pass
    print(f"\nmachine: {machine()}; {time.strftime('%Y-%m-%d')}; local[{args.cores}]")
    print(f"images: {args.images} ({root}), size {args.size}, weights {args.weights}")
    print(f"wall time of dg.materialize (all assets): {wall:.1f} s; csv rows: {csv_rows}; "
          f"peak RSS of the Spark job: {rss.peak_spark // 2**20} MB (+ this process {rss.peak_self // 2**20} MB)")
    print("| step | seconds (STEP_START -> STEP_SUCCESS, incl. IO manager write) |")
    print("|---|---|")
    for step, seconds in steps.items():
        print(f"| {step} | {seconds:.1f} |")
    print(f"| **total (dg.materialize wall)** | {wall:.1f} |")
    print("\nasset metadata:")
    for name, meta in metadata.items():
        print(f"  {name}: {meta}")


if __name__ == "__main__":
    main()
