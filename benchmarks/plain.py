"""The plain single-process loops the pipeline is compared with: what a data scientist would write
without Spark or Dagster, over the same JPEG files. Run as a program, so that its wall time
includes its start-up (imports, model load), as the pipeline's CLI run does.

    python -m benchmarks.plain keras  --images DIR --size 224 --weights W.weights.h5
    python -m benchmarks.plain litert --images DIR --size 224 --model M.tflite

- keras: PIL decode + RGB + resize (`images.decode_image`), `preprocess_input`, `predict_on_batch`
  in batches of 64; TensorFlow's default threads (all cores).
- litert: the same decode and resize, then a LiteRT interpreter (XNNPACK, fp32, all cores) on a
  flatbuffer converted beforehand from the same Keras model (as a user of LiteRT would have it),
  in batches of --batch.
Prints one JSON line: images, wall seconds of the loop, img/s of the loop, and of the model alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def image_paths(root: str) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("engine", choices=["keras", "litert"])
    parser.add_argument("--images", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--weights", help="keras: a Keras weights file")
    parser.add_argument("--model", help="litert: a .tflite flatbuffer")
    parser.add_argument("--batch", type=int, default=0, help="default: 64 (keras), 4 (litert)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, help="only this many images, evenly spaced over the sorted paths")
    args = parser.parse_args(argv)

    import numpy as np

    from fruits_assets.images import decode_image

    paths = image_paths(args.images)
    if args.limit and args.limit < len(paths):
        step = len(paths) / args.limit
        paths = [paths[int(i * step)] for i in range(args.limit)]
    if args.engine == "keras":
        import keras
        from keras.applications.mobilenet_v2 import preprocess_input

        model = keras.applications.MobileNetV2(
            input_shape=(args.size, args.size, 3), include_top=False, weights=None, pooling="avg"
        )
        model.load_weights(args.weights)
        batch = args.batch or 64

        def infer(images):
            return model.predict_on_batch(preprocess_input(images.astype(np.float32)))
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=Path(args.model).read_bytes(), num_threads=args.threads)
        index = interpreter.get_input_details()[0]["index"]
        output = interpreter.get_output_details()[0]["index"]
        batch = args.batch or 4
        allocated = [None]

        def infer(images):
            if allocated[0] != len(images):
                interpreter.resize_tensor_input(index, list(images.shape), strict=True)
                interpreter.allocate_tensors()
                allocated[0] = len(images)
            interpreter.set_tensor(index, images)
            interpreter.invoke()
            return interpreter.get_tensor(output)

    started = time.perf_counter()
    model_seconds, count = 0.0, 0
    for start in range(0, len(paths), batch):
        images = np.stack([decode_image(p.read_bytes(), args.size) for p in paths[start : start + batch]])
        tick = time.perf_counter()
        features = infer(images)
        model_seconds += time.perf_counter() - tick
        count += len(features)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "engine": args.engine,
                "images": count,
                "loop_seconds": round(seconds, 2),
                "loop_img_per_s": round(count / seconds, 1),
                "model_img_per_s": round(count / model_seconds, 1),
                "batch": batch,
                "threads": args.threads if args.engine == "litert" else "tf default",
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
