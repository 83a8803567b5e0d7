"""End to end from the CLI, start-up included: the pipeline vs plain single-process loops, on the
same photos, size, weights and cores, measured in one run, interleaved.

    python -m benchmarks.cli_vs_plain --images 6000 24000 --sizes 224 96

For each N and size, in turn (repeated --repeat times):
- `dagster asset materialize -m fruits_assets.definitions --select '*image_features,rejected_images'`
  on a fresh output folder and DAGSTER_HOME ("cold": a new user's first run, the LiteRT conversion
  in the clock), then again on another fresh output folder holding only the cold run's converted
  model ("warm": every image computed again, the conversion cached);
- `python -m benchmarks.plain keras` (the plain Keras loop, its start-up included);
- `python -m benchmarks.plain litert` (the plain LiteRT loop, on a flatbuffer converted
  beforehand, its start-up included).
Images: the real Fruits-360 photos of --source, then distinct variants of them up to N (`photos`).
At Fruits-360's size the plain Keras loop alone would take most of an hour here: --keras-images
times it on an evenly spaced subset, and --states cold runs the pipeline once.
Reported: wall seconds and img/s of each, the ratios, the pipeline's stage durations (from its
event log), image_features' featurization rate (its progress line) against the plain LiteRT
loop's, and peak RSS per process type (Dagster CLI, Spark JVM, each Spark Python worker), sampled
every 0.2 s over each command's process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import BENCH_DIR, SHARED_WEIGHTS, machine

SHARED_SAMPLE = SHARED_WEIGHTS.parents[1] / "fruits360-sample"
PROJECT = Path(__file__).resolve().parents[1]
SELECT = "*image_features,rejected_images"


def photos(source: Path, count: int) -> Path:
    """`count` distinct images: the photos of `source` (split/class kept), then variants of them.

    Copy 0 of a photo is the photo itself (a hard link). Copy c > 0 is a variant of it: turned by
    c quarter turns, mirrored for odd c // 4, each channel scaled by a seeded gain in [0.85, 1.15],
    saved as JPEG (quality 95) under another name. Not links: linked copies are the same pixels,
    and a copy's neighbours in path order are copies of the same photo, so Parquet pages of them
    compress ~20x (zstd finds the repeats) where distinct photos compress ~1.4x. The pipeline's
    writes and reads looked cheaper than they are on a real collection; the plain loops were not
    affected (they store nothing).
    """
    import numpy as np
    from PIL import Image

    originals = sorted(p for p in source.rglob("*.jpg"))
    target = BENCH_DIR / f"distinct_{count}"
    done = target.parent / f"{target.name}.complete"
    if done.exists():
        return target
    for i in range(count):
        original, copy = originals[i % len(originals)], i // len(originals)
        relative = original.relative_to(source)
        path = target / relative.parent / f"{original.stem}_{copy}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            continue
        if copy == 0:
            os.link(original, path)
            continue
        pixels = np.asarray(Image.open(original).convert("RGB"), dtype=np.float32)
        pixels = np.rot90(pixels, k=copy % 4)
        if (copy // 4) % 2:
            pixels = pixels[:, ::-1]
        gain = np.random.default_rng(copy).uniform(0.85, 1.15, size=3).astype(np.float32)
        variant = np.clip(pixels * gain, 0, 255).round().astype(np.uint8)
        partial = path.with_suffix(".part")
        Image.fromarray(np.ascontiguousarray(variant)).save(partial, format="JPEG", quality=95)
        partial.rename(path)
    done.write_text(str(count))
    return target


def process_kind(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "java" in cmdline.split(" ")[0] or "org.apache.spark" in cmdline:
        return "spark_jvm"
    if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline or "pyspark/daemon" in cmdline:
        return "spark_python_worker"
    return "main"


def rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run(command: list[str], env: dict, log: Path) -> dict:
    """Run `command`; its wall time and peak RSS per process kind (max of one process, in MB)."""
    peaks: dict[str, int] = {}
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT)
        stop = threading.Event()

        def sample():
            while not stop.wait(0.2):
                for pid in [process.pid, *descendants(process.pid)]:
                    kind = process_kind(pid) if pid != process.pid else "main"
                    peaks[kind] = max(peaks.get(kind, 0), rss(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if code != 0:
        kept = BENCH_DIR / f"failed-{time.strftime('%Y%m%dT%H%M%S')}-{log.name}"  # outlives a temporary folder
        shutil.copy(log, kept)
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise SystemExit(f"{tail}\n{' '.join(command)} failed ({code}): see {kept}")
    return {"wall": wall, "peak_rss_mb": {k: v // 2**20 for k, v in peaks.items() if k != "gone"}}


def stage_seconds(home: Path) -> dict:
    import dagster as dg

    steps, starts = {}, {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [record] = instance.get_run_records()
        for entry in instance.all_logs(record.dagster_run.run_id):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type_value == "STEP_START":
                starts[event.step_key] = entry.timestamp
            elif event.event_type_value == "STEP_SUCCESS":
                steps[event.step_key] = round(entry.timestamp - starts[event.step_key], 1)
    return steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[6000, 24000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--source", default=str(SHARED_SAMPLE))
    parser.add_argument("--json", help="write every measurement here too")
    parser.add_argument(
        "--keras-images",
        type=int,
        help="time the plain Keras loop on this many of the photos (evenly spaced; its img/s, start-up "
        "included, is what the table compares): at 88,000 photos it would take longer than everything else",
    )
    parser.add_argument("--states", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    args = parser.parse_args(argv)

    from fruits_assets.featurize import feature_model, resolve_weights
    from fruits_assets.storage import Storage

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    dagster = str(Path(python).parent / "dagster")
    results = []
    for count in args.images:
        folder = photos(Path(args.source), count)
        for size in args.sizes:
            model = feature_model(
                resolve_weights(args.weights, size, Storage()), size, Storage(), str(BENCH_DIR / "_models")
            )
            tflite = BENCH_DIR / "_models" / f"{model.key}.tflite"
            for attempt in range(args.repeat):
                with tempfile.TemporaryDirectory(dir=BENCH_DIR) as tmp:
                    tmp = Path(tmp)
                    (tmp / "home").mkdir()
                    env = {
                        **os.environ,
                        "DAGSTER_HOME": str(tmp / "home"),
                        "FRUITS_OUTPUT_ROOT": str(tmp / "out"),
                        "FRUITS_IMAGES_ROOT": str(folder),
                        "FRUITS_IMAGE_SIZE": str(size),
                        "FRUITS_MODEL_WEIGHTS": args.weights,
                    }
                    keras = run(
                        [
                            python,
                            "-m",
                            "benchmarks.plain",
                            "keras",
                            "--images",
                            str(folder),
                            "--size",
                            str(size),
                            "--weights",
                            args.weights,
                            *(["--limit", str(args.keras_images)] if args.keras_images else []),
                        ],
                        env,
                        tmp / "keras.log",
                    )
                    keras.update(json.loads((tmp / "keras.log").read_text().strip().splitlines()[-1]))
                    litert = run(
                        [
                            python,
                            "-m",
                            "benchmarks.plain",
                            "litert",
                            "--images",
                            str(folder),
                            "--size",
                            str(size),
                            "--model",
                            str(tflite),
                        ],
                        env,
                        tmp / "litert.log",
                    )
                    litert.update(json.loads((tmp / "litert.log").read_text().strip().splitlines()[-1]))
                    for state in args.states:
                        # Each run on a new output folder (a run on the same folder would reuse every
                        # image: incremental); "warm" gets the cold run's converted model (_models).
                        shutil.rmtree(tmp / "home")
                        (tmp / "home").mkdir()
                        out = tmp / f"out-{state}"
                        if state == "warm" and (tmp / "out-cold" / "_models").exists():
                            shutil.copytree(tmp / "out-cold" / "_models", out / "_models")
                        cli = run(
                            [dagster, "asset", "materialize", "-m", "fruits_assets.definitions", "--select", SELECT],
                            {**env, "FRUITS_OUTPUT_ROOT": str(out)},
                            tmp / "cli.log",
                        )
                        log = (tmp / "cli.log").read_text()
                        done = re.search(r"image_features: done, (\d+) rows in (\d+) s, ([\d.]+)/s", log)
                        cli.update(
                            stages=stage_seconds(tmp / "home"),
                            featurize_img_per_s=float(done.group(3)) if done else None,
                        )
                        row = {
                            "images": count,
                            "size": size,
                            "run": state,
                            "attempt": attempt,
                            "keras": keras,
                            "litert": litert,
                            "cli": cli,
                        }
                        results.append(row)
                        print(json.dumps(row), flush=True)

    print(f"\nmachine: {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; load average now {os.getloadavg()[0]:.1f}")
    print(
        "| images | size | run | plain Keras img/s | plain LiteRT img/s | pipeline img/s | **vs Keras** | vs LiteRT "
        "| featurization img/s (vs LiteRT loop) | stages (s) | peak RSS MB: CLI / JVM / Python worker |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        n, keras, litert, cli = row["images"], row["keras"], row["litert"], row["cli"]
        k, lt, p = keras["images"] / keras["wall"], n / litert["wall"], n / cli["wall"]
        feat = cli["featurize_img_per_s"]
        rss_ = cli["peak_rss_mb"]
        print(
            f"| {n} | {row['size']} | {row['run']} | {k:.1f} ({keras['wall']:.0f} s for {keras['images']}) | {lt:.1f} ({litert['wall']:.0f} s) | "
            f"{p:.1f} ({cli['wall']:.0f} s) | **{p / k:.2f}x** | {p / lt:.2f}x | "
            f"{feat} ({feat / litert['loop_img_per_s']:.2f}x) | "
            f"{', '.join(f'{s}: {v}' for s, v in cli['stages'].items())} | "
            f"{rss_.get('main', 0)} / {rss_.get('spark_jvm', 0)} / {rss_.get('spark_python_worker', 0)} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
