"""Incremental runs, end to end from the CLI: what a second run costs after photos are added and
changed, against the first run, and whether its CSV equals a from-scratch run.

    python -m benchmarks.incremental --images 6000 --size 224

1. `dagster asset materialize -m fruits_assets.definitions --select '*'` on N photos (the
   Fruits-360 photos of --source and distinct variants of them, as in cli_vs_plain), fresh output
   and home.
2. One class of --added photos appears (a new folder) and --changed existing files get other
   bytes (a file is replaced, never written through: some photos are hard links to ../shared).
3. The same command again on the same output folder: wall time, and from the run's materialization
   metadata how many images it decoded, preprocessed and featurized (new + changed expected).
4. The same command once more, nothing changed since (`--no-unchanged-run` to skip): every step
   must find nothing new (`unchanged` in its metadata: no Spark, no Parquet read, no refit).
5. The same command on the final folder with a fresh output folder (from scratch): its CSV must
   equal the incremental run's (same rows, values within 1e-4).
The plain-Keras and plain-LiteRT img/s of this machine on the same photos are printed beside the
figures (speeds differ up to 5x between machines; only the ratios of one run count), and the three
runs' ratios to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.cli_vs_plain import photos, run, stage_seconds
from benchmarks.common import BENCH_DIR, SHARED_WEIGHTS, machine

SHARED_SAMPLE = SHARED_WEIGHTS.parents[1] / "fruits360-sample"


def mirror(source: Path, target: Path) -> None:
    """A copy of the folder `source` made of hard links (no photo is copied or altered)."""
    for path in source.rglob("*"):
        if path.is_file():
            link = target / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)


def add_and_change(root: Path, added: int, changed: int) -> int:
    """A new class of `added` photos in Training, and `changed` existing Training photos replaced
    by other bytes (a mirrored, re-encoded image). Returns how many images are new or changed."""
    from PIL import Image

    training = sorted((root / "Training").rglob("*.jpg"))
    new_class = root / "Training" / "Zz New Class"
    new_class.mkdir(parents=True)
    for i in range(added):
        os.link(training[i % len(training)], new_class / f"new_{i}.jpg")
    for path in training[len(training) - changed :]:
        with Image.open(path) as image:
            flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path.unlink()  # replace, do not write through the hard link
        flipped.save(path, quality=90)
    return added + changed


def litert_loop(folder: Path, size: int, weights: str, env: dict, tmp: Path) -> dict:
    """The plain LiteRT loop (benchmarks.plain) on these photos, its start-up included."""
    from fruits_assets.featurize import feature_model, resolve_weights
    from fruits_assets.storage import Storage

    model = feature_model(resolve_weights(weights, size, Storage()), size, Storage(), str(BENCH_DIR / "_models"))
    tflite = BENCH_DIR / "_models" / f"{model.key}.tflite"
    command = [sys.executable, "-m", "benchmarks.plain", "litert", "--images", str(folder), "--size", str(size)]
    return run([*command, "--model", str(tflite)], env, tmp / "litert.log")


def run_metadata(home: Path) -> dict:
    """{asset: {metadata key: value}} of the (only or latest) run in `home`."""
    import dagster as dg

    out: dict = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        record = instance.get_run_records(limit=1)[0]
        for entry in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            materialization = entry.dagster_event.event_specific_data.materialization
            out[materialization.asset_key.to_user_string()] = {k: v.value for k, v in materialization.metadata.items()}
    return out


def csv_frame(output: Path):
    import pandas as pd

    return pd.read_csv(output / "pca_features_csv" / "pca_features.csv").set_index("path").sort_index()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--added", type=int, default=300)
    parser.add_argument("--changed", type=int, default=5)
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--source", default=str(SHARED_SAMPLE))
    parser.add_argument("--no-unchanged-run", dest="unchanged_run", action="store_false")
    args = parser.parse_args(argv)

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    dagster = [
        str(Path(python).parent / "dagster"),
        "asset",
        "materialize",
        "-m",
        "fruits_assets.definitions",
        "--select",
        "*",
    ]
    tmp = BENCH_DIR / f"incremental_{args.images}_{args.size}"  # kept until the next run: logs, outputs
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    folder = tmp / "photos"
    mirror(photos(Path(args.source), args.images), folder)

    def env(name: str) -> dict:
        home = tmp / f"home-{name}"
        home.mkdir()
        return {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "FRUITS_IMAGES_ROOT": str(folder),
            "FRUITS_IMAGE_SIZE": str(args.size),
            "FRUITS_MODEL_WEIGHTS": args.weights,
        }

    first_env = {**env("first"), "FRUITS_OUTPUT_ROOT": str(tmp / "out")}
    keras = run(
        [
            python,
            "-m",
            "benchmarks.plain",
            "keras",
            "--images",
            str(folder),
            "--size",
            str(args.size),
            "--weights",
            args.weights,
        ],
        first_env,
        tmp / "keras.log",
    )
    keras_rate = args.images / keras["wall"]
    litert_rate = args.images / litert_loop(folder, args.size, args.weights, first_env, tmp)["wall"]
    first = run(dagster, first_env, tmp / "first.log")
    expected = add_and_change(folder, args.added, args.changed)
    second_env = {**env("second"), "FRUITS_OUTPUT_ROOT": str(tmp / "out")}
    second = run(dagster, second_env, tmp / "second.log")
    metadata = run_metadata(Path(second_env["DAGSTER_HOME"]))
    incremental = csv_frame(tmp / "out")  # before the unchanged run writes its own
    unchanged = None
    if args.unchanged_run:
        unchanged_env = {**env("unchanged"), "FRUITS_OUTPUT_ROOT": str(tmp / "out")}
        unchanged = run(dagster, unchanged_env, tmp / "unchanged.log")
        unchanged_metadata = run_metadata(Path(unchanged_env["DAGSTER_HOME"]))
    scratch = run(dagster, {**env("scratch"), "FRUITS_OUTPUT_ROOT": str(tmp / "scratch")}, tmp / "scratch.log")

    import numpy as np

    fresh = csv_frame(tmp / "scratch")
    same_rows = list(incremental.index) == list(fresh.index) and list(incremental.columns) == list(fresh.columns)
    numeric = [c for c in fresh.columns if c.startswith("pc_")]
    max_diff = float(np.abs(incremental[numeric].to_numpy() - fresh[numeric].to_numpy()).max()) if same_rows else None
    figures = {
        "machine": machine(),
        "images": args.images,
        "size": args.size,
        "new_or_changed": expected,
        "plain_keras_img_per_s": round(keras_rate, 1),
        "first_run_s": round(first["wall"], 1),
        "second_run_s": round(second["wall"], 1),
        "scratch_run_s": round(scratch["wall"], 1),
        "second_vs_first": round(second["wall"] / first["wall"], 3),
        "unchanged_run_s": round(unchanged["wall"], 1) if unchanged else None,
        "unchanged_vs_first": round(unchanged["wall"] / first["wall"], 3) if unchanged else None,
        "plain_litert_img_per_s": round(litert_rate, 1),
        "scratch_vs_first": round(scratch["wall"] / first["wall"], 3),
        "unchanged_steps_computing": sorted(a for a, m in unchanged_metadata.items() if "unchanged" not in m)
        if unchanged
        else None,
        "step_seconds": {
            name: stage_seconds(tmp / f"home-{name}")
            for name in ("first", "second", "unchanged", "scratch")
            if (tmp / f"home-{name}").exists()
        },
        "raw_images": {k: metadata["raw_images"].get(k) for k in ("images", "decoded_to_check", "checks_reused")},
        "preprocessed_images": {k: metadata["preprocessed_images"].get(k) for k in ("reused", "computed", "removed")},
        "image_features": {k: metadata["image_features"].get(k) for k in ("reused", "computed", "removed")},
        "csv_rows": len(incremental),
        "csv_same_rows_as_scratch": same_rows,
        "csv_max_abs_diff": max_diff,
    }
    print(json.dumps(figures, indent=1))
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} {machine()}; plain Keras {keras_rate:.1f} img/s, "
        f"plain LiteRT {litert_rate:.1f} img/s on these photos"
    )
    print(
        f"| photos | size | plain Keras img/s | plain LiteRT img/s | first | second ({expected} new or changed) "
        "| second / first | nothing new | nothing new / first | from scratch / first |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    nothing = f"{figures['unchanged_run_s']} s | **{figures['unchanged_vs_first']:.0%}**" if unchanged else "- | -"
    print(
        f"| {args.images:,} | {args.size} | {keras_rate:.1f} | {litert_rate:.1f} | {figures['first_run_s']} s "
        f"| {figures['second_run_s']} s | **{figures['second_vs_first']:.0%}** | {nothing} "
        f"| {figures['scratch_vs_first']:.0%} |"
    )
    ok = (
        figures["preprocessed_images"]["computed"] == expected
        and (unchanged is None or figures["unchanged_steps_computing"] == [])
        and figures["image_features"]["computed"] == expected
        and same_rows
        and max_diff is not None
        and max_diff <= 1e-4
    )
    print(
        f"second run {figures['second_vs_first']:.0%} of the first; "
        f"computed {figures['image_features']['computed']} of {expected} expected; "
        f"CSV vs scratch: same rows {same_rows}, max abs diff {max_diff}: {'OK' if ok else 'NOT OK'}"
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
