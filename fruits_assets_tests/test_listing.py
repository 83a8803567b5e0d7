"""Listing and labelling files in the Fruits-360 layout, without Spark or Dagster."""

from pathlib import Path

from fruits_assets.listing import apply_limit, classify, list_images
from fruits_assets.storage import Storage


def test_label_and_split_come_from_the_folders_and_keep_spaces():
    f = classify("/data/fruits", "/data/fruits/Training/Apple Red 1/r_0_100.jpg")
    assert (f.split, f.label, f.reason) == ("Training", "Apple Red 1", None)


def test_s3_paths_are_labelled_like_local_ones():
    f = classify("s3://bucket/fruits/", "s3://bucket/fruits/Test/Kiwi 1/0_100.JPG")
    assert (f.split, f.label, f.reason) == ("Test", "Kiwi 1", None)


def test_extensions_are_case_insensitive():
    for name in ("a.jpg", "a.JPG", "a.jpeg", "a.JpEg", "a.png", "a.PNG"):
        assert classify("/r", f"/r/Training/Kiwi 1/{name}").reason is None, name


def test_accents_and_non_ascii_letters_are_kept():
    f = classify("/r", "/r/Test/Pomme Golden é 1/é-ü 1.jpg")
    assert (f.label, f.reason) == ("Pomme Golden é 1", None)


def test_hidden_and_system_files_are_rejected_with_a_reason():
    for name in (".DS_Store", "Thumbs.db", "._0_100.jpg"):
        reason = classify("/r", f"/r/Training/Kiwi 1/{name}").reason
        assert reason == "hidden or system file", name


def test_wrong_depth_is_rejected_with_a_reason():
    too_shallow = classify("/r", "/r/Training/0_100.jpg")
    too_deep = classify("/r", "/r/Training/Kiwi 1/extra/0_100.jpg")
    assert too_shallow.reason.startswith("wrong depth")
    assert too_deep.reason.startswith("wrong depth")
    assert too_shallow.split == "Training" and too_shallow.label is None


def test_non_image_names_are_rejected():
    assert classify("/r", "/r/Training/Kiwi 1/notes.txt").reason.startswith("not an image file name")


def test_limit_keeps_the_first_images_per_split_and_class_and_counts_the_rest():
    files = [classify("/r", f"/r/{s}/{c}/{i}.jpg") for s in ("Training", "Test") for c in "AB" for i in range(5)]
    files.append(classify("/r", "/r/Training/A/.DS_Store"))
    kept, skipped = apply_limit(files, 2)
    assert skipped == 2 * 2 * 3
    assert len([f for f in kept if f.reason is None]) == 8
    assert any(f.reason for f in kept), "rejected files are never dropped by the limit"
    assert apply_limit(files, 0) == (files, 0)


def test_list_images_walks_a_real_folder(tmp_path: Path):
    for rel in ("Training/Banana 1/0.jpg", "Training/Banana 1/1.png", "Test/Banana 1/0.jpg", "Training/.DS_Store"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    listed, skipped = list_images(Storage(), str(tmp_path))
    assert skipped == 0
    assert len(listed) == 4
    assert sorted(f.reason is None for f in listed) == [False, True, True, True]


def test_list_images_can_keep_only_some_splits(tmp_path: Path):
    for rel in ("Training/Kiwi 1/0.jpg", "Test/Kiwi 1/0.jpg", "Test/Kiwi 1/1.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    listed, _ = list_images(Storage(), str(tmp_path), splits=["Test"])
    assert [f.split for f in listed] == ["Test", "Test"]
