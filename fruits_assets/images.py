"""Decoding, validating and resizing one image: the pure logic behind `preprocessed_images`.

The output is a compact uint8 RGB array (size x size x 3), stored as raw bytes: 150,528 bytes at
224 px instead of 602,112 for float32. The model's own scaling (`preprocess_input`) happens at
featurization, so the stored arrays stay model-independent.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile

# A Fruits-360 photo is 100x100; 50 megapixels is far beyond any real fruit photo and far below
# what would exhaust a worker's memory. Checked from the header, before any pixel is decoded.
MAX_PIXELS = 50_000_000
# Changing what `open_image` accepts changes CHECK_VERSION (raw_images' verdicts); changing how an
# image becomes an array changes DECODE_VERSION (preprocessed_images): their code versions.
CHECK_VERSION = "jpeg-png-50mp-rgb-v1"
DECODE_VERSION = "rgb-white-bilinear-uint8-v1"
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is a rejected image, not a grey one


class ImageRejected(ValueError):
    """The bytes are not a usable image; the message is the quarantine reason."""


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of a JPEG/PNG -> uint8 array (size, size, 3), RGB; raises ImageRejected."""
    image = open_image(data, max_pixels)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes of a JPEG/PNG -> the decoded RGB image; raises ImageRejected (the quarantine reason)
    for anything that is not a usable image."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns/raises at its limit; ours is explicit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(f"too many pixels ({width}x{height} > {max_pixels:,}): possible decompression bomb")
            if image.format not in ("JPEG", "PNG"):
                raise ImageRejected(f"unsupported image format {image.format}")
            image.load()
    except ImageRejected:
        raise
    except Image.DecompressionBombError as error:
        raise ImageRejected(f"possible decompression bomb: {error}") from None
    except Exception as error:  # Pillow raises many types for corrupt data
        raise ImageRejected(f"cannot decode image: {type(error).__name__}: {error}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB. Transparent pixels become white, the Fruits-360 background."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def array_to_bytes(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def bytes_to_batch(blobs, size: int) -> np.ndarray:
    """Stored raw uint8 images -> one (n, size, size, 3) uint8 array, without copies per image."""
    joined = b"".join(blobs)
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, size, size, 3)
