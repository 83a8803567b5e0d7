"""A small synthetic sample in the Fruits-360 layout, generated deterministically.

It lets the pipeline run on a fresh machine with no data. The images are SYNTHETIC drawings, not
photos: 100x100 JPEGs of fruit-like shapes on a white background, one class per colour, shape and
texture, each image rotated and shifted a little, as Fruits-360 photos of a turning fruit are.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SAMPLE_SEED = 360
IMAGE_SIZE = 100
# The sample's data version as the `photos` asset observes it: changing what `generate_sample`
# draws changes this.
SAMPLE_VERSION = "synthetic-sample-360-v1"

# name: (body colour, shape, texture colour or None, leaf colour or None)
CLASSES = {
    "Apple Red 1": ((190, 25, 35), "round", (230, 120, 110), (60, 120, 40)),
    "Banana 1": ((235, 205, 50), "crescent", None, None),
    "Blueberry 1": ((55, 60, 120), "small", (120, 130, 180), None),
    "Kiwi 1": ((120, 90, 50), "oval", (90, 65, 35), None),
    "Lime 1": ((110, 180, 50), "oval", (150, 210, 90), None),
    "Orange 1": ((245, 140, 20), "round", (220, 110, 10), None),
    "Strawberry 1": ((215, 30, 50), "heart", (250, 230, 120), (40, 140, 40)),
    "Grape Blue 1": ((80, 40, 110), "cluster", (130, 90, 160), None),
}


def _jitter(rng: random.Random, colour, amount=18):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def draw_fruit(name: str, rng: random.Random) -> Image.Image:
    body, shape, texture, leaf = CLASSES[name]
    scale = 4  # draw large and downsample: smooth edges like a photo
    size = IMAGE_SIZE * scale
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    colour = _jitter(rng, body)
    cx, cy = size / 2 + rng.uniform(-20, 20), size / 2 + rng.uniform(-20, 20)
    r = size * rng.uniform(0.30, 0.36)
    if shape == "round":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "small":
        r *= 0.6
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "oval":
        draw.ellipse((cx - r, cy - r * 0.75, cx + r, cy + r * 0.75), fill=colour)
    elif shape == "crescent":
        draw.ellipse((cx - r * 1.2, cy - r, cx + r * 1.2, cy + r), fill=colour)
        draw.ellipse((cx - r * 1.2, cy - r * 1.45, cx + r * 1.2, cy + r * 0.45), fill=(255, 255, 255))
    elif shape == "heart":
        draw.polygon([(cx - r, cy - r * 0.6), (cx + r, cy - r * 0.6), (cx, cy + r * 1.1)], fill=colour)
        draw.ellipse((cx - r, cy - r * 1.1, cx + r, cy + r * 0.2), fill=colour)
    elif shape == "cluster":
        for i in range(9):
            gx = cx + (i % 3 - 1) * r * 0.55 + rng.uniform(-6, 6)
            gy = cy + (i // 3 - 1) * r * 0.55 + rng.uniform(-6, 6)
            gr = r * 0.33
            draw.ellipse((gx - gr, gy - gr, gx + gr, gy + gr), fill=_jitter(rng, colour, 10))
    if texture is not None:  # spots, seeds or highlights: a texture per class
        for _ in range(40):
            a, d = rng.uniform(0, 2 * math.pi), rng.uniform(0, r * 0.8)
            x, y = cx + d * math.cos(a), cy + d * math.sin(a)
            if image.getpixel((int(x), int(y))) != (255, 255, 255):
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=_jitter(rng, texture, 10))
    if leaf is not None:
        draw.ellipse((cx - 12, cy - r - 30, cx + 30, cy - r + 4), fill=leaf)
    image = image.rotate(rng.uniform(0, 360), resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    image = image.filter(ImageFilter.GaussianBlur(2)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return image


def generate_sample(root: str | Path, train_per_class: int = 8, test_per_class: int = 4) -> Path:
    """Write the sample under `root` (idempotent: same files, same bytes, every time)."""
    root = Path(root)
    marker = root.parent / f"{root.name}.complete"  # outside the root: not an input file
    expected = f"{SAMPLE_SEED}:{train_per_class}:{test_per_class}:{len(CLASSES)}"
    if marker.exists() and marker.read_text() == expected:
        return root
    rng = random.Random(SAMPLE_SEED)
    for split, count in (("Training", train_per_class), ("Test", test_per_class)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_fruit(name, rng).save(folder / f"{i}_100.jpg", quality=95)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(expected)
    return root


def sample_images(root_uri: str, storage) -> str:
    """The sample at `root_uri` (a folder, or s3:// for the emr deployment: generated here, then
    uploaded once, so the cluster's executors read it like any other images root)."""
    from fruits_assets.storage import is_s3, join

    if not is_s3(root_uri):
        return str(generate_sample(root_uri))
    marker = f"{root_uri.rstrip('/')}.complete"
    if storage.exists(marker):
        return root_uri
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = generate_sample(Path(tmp) / "images")
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            storage.upload_file(str(path), join(root_uri, *path.relative_to(local).parts))
        storage.write_bytes(marker, (local.parent / "images.complete").read_bytes())
    return root_uri
