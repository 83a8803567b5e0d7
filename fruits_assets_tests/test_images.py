"""Decoding, converting and resizing single images, and rejecting bad ones, without Spark."""

import io

import numpy as np
import pytest
from PIL import Image

from fruits_assets.images import ImageRejected, array_to_bytes, bytes_to_batch, decode_image


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_jpeg_is_decoded_resized_and_kept_as_uint8():
    data = encode(Image.new("RGB", (100, 100), (200, 30, 40)))
    array = decode_image(data, 224)
    assert array.shape == (224, 224, 3) and array.dtype == np.uint8
    assert abs(int(array[100, 100, 0]) - 200) <= 3


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_other_colour_modes_become_rgb(mode):
    image = Image.new("RGB", (100, 100), (10, 120, 240)).convert(mode)
    fmt = "PNG" if mode in ("RGBA", "P") else "JPEG"
    assert decode_image(encode(image, fmt), 96).shape == (96, 96, 3)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    array = decode_image(encode(image, "PNG"), 96)
    assert array.min() >= 250


def test_images_that_are_not_100x100_are_resized_not_rejected():
    assert decode_image(encode(Image.new("RGB", (640, 320))), 128).shape == (128, 128, 3)


def test_empty_file_is_rejected():
    with pytest.raises(ImageRejected, match="empty file"):
        decode_image(b"", 224)


def test_truncated_jpeg_is_rejected():
    noise = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise))
    with pytest.raises(ImageRejected, match="cannot decode"):
        decode_image(data[: len(data) // 2], 224)


def test_text_file_named_jpg_is_rejected():
    with pytest.raises(ImageRejected, match="cannot decode"):
        decode_image(b"this is not a picture\n", 224)


def test_decompression_bomb_is_rejected_from_its_header():
    # 20000 x 20000 = 400 Mpx: a tiny PNG that would take 1.2 GB decoded.
    data = encode(Image.new("L", (20000, 20000)), "PNG")
    assert len(data) < 2_000_000
    with pytest.raises(ImageRejected, match="decompression bomb"):
        decode_image(data, 224)


def test_batches_round_trip_through_raw_bytes():
    arrays = [np.full((96, 96, 3), i, dtype=np.uint8) for i in range(3)]
    batch = bytes_to_batch([array_to_bytes(a) for a in arrays], 96)
    assert batch.shape == (3, 96, 96, 3)
    assert [int(batch[i, 0, 0, 0]) for i in range(3)] == [0, 1, 2]
