"""Dirty image folders: every bad input is a real file made here, run through the real assets on
local Spark; each lands in `rejected_images` with its reason, valid oddities are converted, and
the counts reconcile (listed = preprocessed + rejected)."""

import io
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from fruits_assets_tests.helpers import check_results, load, materialize, metadata_of, run_config


def jpeg(mode="RGB", size=(100, 100), colour=(200, 40, 40), fmt="JPEG") -> bytes:
    image = Image.new("RGB", size, colour)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noisy_jpeg() -> bytes:
    noise = np.random.default_rng(1).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buffer, format="PNG")  # 900 Mpx, ~100 KB on disk
    return buffer.getvalue()


# relative path -> (bytes, expected: None for a valid image, else (stage, reason fragment))
CASES = {
    "Training/Apple Red 1/good.jpg": (jpeg(), None),
    "Training/Apple Red 1/photo.PNG": (jpeg(fmt="PNG"), None),
    "Training/Apple Red 1/gray.jpg": (jpeg("L"), None),
    "Training/Apple Red 1/cmyk.jpg": (jpeg("CMYK"), None),
    "Training/Apple Red 1/rgba.png": (jpeg("RGBA", fmt="PNG"), None),
    "Training/Apple Red 1/wide 640x320.jpeg": (jpeg(size=(640, 320)), None),
    "Training/Pomme Rougé 1/çà été 1.jpg": (jpeg(colour=(40, 200, 40)), None),
    "Test/苹果 1/图片 1.jpg": (jpeg(colour=(40, 40, 200)), None),
    "Test/Apple Red 1/ok.jpg": (jpeg(), None),
    "Training/Apple Red 1/empty.jpg": (b"", ("decode", "empty file")),
    "Training/Apple Red 1/truncated.jpg": (noisy_jpeg()[:1500], ("decode", "cannot decode")),
    "Training/Apple Red 1/notes.jpg": (b"not an image at all\n", ("decode", "cannot decode")),
    "Training/Apple Red 1/bomb.png": (bomb_png(), ("decode", "decompression bomb")),
    "Training/Apple Red 1/.DS_Store": (b"\0\0\0\1Bud1", ("listing", "hidden or system file")),
    "Training/Apple Red 1/Thumbs.db": (b"\xd0\xcf\x11\xe0", ("listing", "hidden or system file")),
    "Training/stray.jpg": (jpeg(), ("listing", "wrong depth")),
    "Training/Apple Red 1/extra/deep.jpg": (jpeg(), ("listing", "wrong depth")),
    "Training/Apple Red 1/readme.txt": (b"hello", ("listing", "not an image file name")),
}


UNREADABLE = "Training/Apple Red 1/dangling.jpg"


@pytest.fixture(scope="module")
def dirty_run(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("dirty") / "images"
    for rel, (data, _) in CASES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    # Listed, but cannot be read (a dangling link: root can read any permission-protected file).
    (root / UNREADABLE).symlink_to(root / "nowhere.jpg")
    out = tmp_path_factory.mktemp("out")
    config = run_config(root, image_size=96)
    selection = dg.AssetSelection.assets("raw_images", "preprocessed_images", "rejected_images")
    result = materialize(out, config, selection=selection | selection.checks_for_assets())
    return root, out, result


def test_every_bad_file_is_quarantined_with_its_reason(dirty_run):
    root, out, result = dirty_run
    assert result.success
    rejected = {Path(r.path).relative_to(root).as_posix(): r for r in load(out, "rejected_images").collect()}
    expected = {rel: exp for rel, (_, exp) in CASES.items() if exp is not None}
    expected[UNREADABLE] = ("read", "unreadable file: FileNotFoundError")
    assert set(rejected) == set(expected)
    for rel, (stage, fragment) in expected.items():
        assert rejected[rel].stage == stage, rel
        assert fragment in rejected[rel].reason, (rel, rejected[rel].reason)


def test_valid_oddities_are_converted_not_rejected(dirty_run):
    root, out, _ = dirty_run
    rows = {Path(r.path).relative_to(root).as_posix(): r for r in load(out, "preprocessed_images").collect()}
    assert set(rows) == {rel for rel, (_, exp) in CASES.items() if exp is None}
    assert all(len(r.image) == 96 * 96 * 3 for r in rows.values())
    assert rows["Test/苹果 1/图片 1.jpg"].label == "苹果 1"
    assert rows["Training/Pomme Rougé 1/çà été 1.jpg"].label == "Pomme Rougé 1"


def test_counts_reconcile_and_are_reported(dirty_run):
    _, _, result = dirty_run
    listed = len(CASES) + 1  # + the unreadable file
    valid = sum(1 for _, exp in CASES.values() if exp is None)
    passed, _, metadata = check_results(result)["counts_reconcile"]
    counts = {k: metadata[k] for k in ("listed", "preprocessed", "rejected")}
    assert passed and counts == {"listed": listed, "preprocessed": valid, "rejected": listed - valid}
    reasons = metadata_of(result, "rejected_images")["by_reason"]
    assert "decompression bomb" in reasons and "hidden or system file" in reasons
    assert metadata_of(result, "raw_images")["rejected_at_listing"] == 5
    assert metadata_of(result, "raw_images")["unreadable"] == 1


def test_a_fatal_configuration_error_is_the_headline_not_a_stack_trace(spark, tmp_path):
    empty = tmp_path / "empty"
    (empty / "Training").mkdir(parents=True)
    result = materialize(
        tmp_path / "out",
        run_config(empty),
        selection=["raw_images"],
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    assert error.message.startswith("dagster._core.definitions.events.Failure: No image file found")
    assert "Py4J" not in error.message and "java" not in error.message.lower()
    assert failure.step_failure_data.user_failure_data.description.startswith("No image file found")


def test_a_second_run_reuses_verdicts_and_tries_unreadable_files_again(spark, tmp_path):
    """Two runs over one output folder. Between them, the unreadable file becomes readable and a
    file rejected for its name changes. The second run reads again only those two: the other
    rejections (for a name, for a content) and the good images are reused with their verdicts,
    the once-unreadable file becomes an image, and the counts reconcile in both runs."""
    kept = [
        "Training/Apple Red 1/good.jpg",
        "Test/Apple Red 1/ok.jpg",
        "Training/Apple Red 1/notes.jpg",  # rejected when decoded
        "Training/Apple Red 1/readme.txt",  # rejected for its name; changes between the runs
        "Training/Apple Red 1/.DS_Store",  # rejected for its name
        "Training/stray.jpg",  # rejected for its place
    ]
    root = tmp_path / "images"
    for rel in kept:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(CASES[rel][0])
    target = tmp_path / "elsewhere" / "photo.jpg"  # outside the root: never listed itself
    (root / UNREADABLE).symlink_to(target)
    out = tmp_path / "out"
    selection = dg.AssetSelection.assets("raw_images", "preprocessed_images", "rejected_images")
    selection = selection | selection.checks_for_assets()

    def run():
        result = materialize(out, run_config(root, image_size=96), selection=selection)
        passed, _, counts = check_results(result)["counts_reconcile"]
        assert passed
        rejected = {Path(r.path).relative_to(root).as_posix(): r.stage for r in load(out, "rejected_images").collect()}
        images = {Path(r.path).relative_to(root).as_posix() for r in load(out, "preprocessed_images").collect()}
        return result, {k: counts[k] for k in ("listed", "preprocessed", "rejected")}, rejected, images

    first, counts, rejected, images = run()
    assert counts == {"listed": 7, "preprocessed": 2, "rejected": 5}
    assert rejected[UNREADABLE] == "read" and images == set(kept[:2])

    target.parent.mkdir()
    target.write_bytes(jpeg(colour=(10, 120, 10)))
    (root / kept[3]).write_bytes(b"hello again, longer")
    second, counts, rejected, images = run()
    raw = metadata_of(second, "raw_images")
    # `removed`: rows of the previous version that are not kept (here the two files' old rows).
    assert {k: raw[k] for k in ("computed", "reused", "removed")} == {"computed": 2, "reused": 5, "removed": 2}
    assert raw["unreadable"] == 0 and raw["decoded_to_check"] == 1 and raw["rejected_at_listing"] == 3
    assert counts == {"listed": 7, "preprocessed": 3, "rejected": 4}
    assert images == {*kept[:2], UNREADABLE}
    assert rejected == {kept[2]: "decode", kept[3]: "listing", kept[4]: "listing", kept[5]: "listing"}
    pre = metadata_of(second, "preprocessed_images")
    assert {k: pre[k] for k in ("computed", "reused")} == {"computed": 1, "reused": 2}
