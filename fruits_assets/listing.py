"""Listing and labelling files in the Fruits-360 layout `<root>/<split>/<Class Name>/<file>`.

Every file found is kept, labelled when it can be, and given a rejection reason when it is not an
image in the expected place: nothing found is silently dropped.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

# Changing how files are labelled or rejected by name and place changes this (raw_images' code version).
LAYOUT_VERSION = "split-class-file-v1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "icon\r"}


@dataclass(frozen=True)
class ListedFile:
    path: str
    split: str | None
    label: str | None
    reason: str | None  # None: an image to decode; else why it was rejected at listing
    # What says whether the file changed since an earlier run (`Storage.identity`); None: unknown.
    identity: str | None = None


def relative_parts(root: str, path: str) -> list[str]:
    root = root.rstrip("/").rstrip("\\")
    rel = path[len(root) :].lstrip("/").lstrip("\\")
    return [p for p in rel.replace("\\", "/").split("/") if p]


def classify(root: str, path: str) -> ListedFile:
    """Split, label and (when not usable) the rejection reason of one listed file."""
    parts = relative_parts(root, path)
    name = parts[-1] if parts else path
    split = parts[0] if len(parts) >= 2 else None
    label = parts[1] if len(parts) == 3 else None
    if name.startswith(".") or name.lower() in SYSTEM_FILES:
        reason = "hidden or system file"
    elif any(p.startswith(".") for p in parts[:-1]):
        reason = "inside a hidden folder"
    elif not name.lower().endswith(IMAGE_EXTENSIONS):
        reason = f"not an image file name (expected {', '.join(IMAGE_EXTENSIONS)})"
    elif len(parts) != 3:
        reason = f"wrong depth ({len(parts) - 1} folders below the root): expected <split>/<Class Name>/<file>"
    else:
        reason = None
    return ListedFile(path=path, split=split, label=label, reason=reason)


def apply_limit(files: list[ListedFile], limit_per_class: int | None) -> tuple[list[ListedFile], int]:
    """Keep the first `limit_per_class` images (by path) of each (split, label); count the rest.

    Rejected files are always kept: a sample for a quick run must still show what is wrong.
    """
    if not limit_per_class or limit_per_class <= 0:
        return files, 0
    seen: dict[tuple, int] = defaultdict(int)
    kept, skipped = [], 0
    for f in sorted(files, key=lambda f: f.path):
        if f.reason is None:
            seen[(f.split, f.label)] += 1
            if seen[(f.split, f.label)] > limit_per_class:
                skipped += 1
                continue
        kept.append(f)
    return kept, skipped


def list_images(
    storage,
    root: str,
    limit_per_class: int | None = None,
    splits: list[str] | None = None,
    versions: dict[str, str] | None = None,
) -> tuple[list[ListedFile], int]:
    """All files under `root` (only under the `splits` top folders, if given), classified,
    identified (`Storage.identity`: an image's content hash is read here, locally) and sorted by
    path; and how many the limit skipped. `versions`: the root's listing, if already made
    (`Storage.list_versions`)."""
    versions = dict(storage.list_versions(root)) if versions is None else versions
    files = [classify(root, p) for p in versions]
    if splits:
        files = [f for f in files if f.split in splits]
    files.sort(key=lambda f: f.path)
    kept, skipped = apply_limit(files, limit_per_class)
    with ThreadPoolExecutor(8) as pool:  # local reads: I/O bound, and sha256 releases the GIL
        identities = pool.map(lambda f: storage.identity(f.path, versions[f.path], f.reason is None), kept)
        return [replace(f, identity=identity) for f, identity in zip(kept, identities, strict=True)], skipped


def check_images_root(root: str, storage) -> str:
    """`root` if it holds files, else one clear error saying what to set."""
    from fruits_assets.errors import FruitsConfigError

    if not storage.root_exists(root):
        raise FruitsConfigError(
            f"Images root {root!r} does not exist or is empty: set FRUITS_IMAGES_ROOT (or the "
            "settings' images_root) to a folder or s3:// URI laid out as "
            "<split>/<Class Name>/<file>.jpg, or to 'sample'."
        )
    return root


def usable_images(listed: list[ListedFile], root: str) -> list[ListedFile]:
    """The listed files that are images in the layout, or one clear error if there are none."""
    from fruits_assets.errors import FruitsConfigError

    images = [f for f in listed if f.reason is None]
    if not images:
        raise FruitsConfigError(
            f"No image file found under {root!r} in the layout <split>/<Class Name>/<file>.jpg "
            f"({len(listed)} other files found)."
        )
    return images


def images_per_class(images: list[ListedFile]) -> tuple[list[str], list[list]]:
    """(header, rows) of a table of image counts per class and split, with a total row."""
    counts: dict[tuple, int] = {}
    for f in images:
        counts[(f.split, f.label)] = counts.get((f.split, f.label), 0) + 1
    splits = sorted({s for s, _ in counts})
    labels = sorted({label for _, label in counts})
    rows = [[label, *[counts.get((s, label), 0) for s in splits]] for label in labels]
    rows.append(["**total**", *[sum(c for (s, _), c in counts.items() if s == split) for split in splits]])
    return ["class", *splits], rows
