"""Plots as PNG, embedded in markdown metadata so the Dagster UI shows them (no plot server)."""

from __future__ import annotations

import base64
import io

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to PNG bytes
    import matplotlib.pyplot as plt

    return plt


def _figure(width=6.0, height=4.0):
    plt = _pyplot()
    return plt, plt.subplots(figsize=(width, height), dpi=90)


def _png(plt, fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def markdown_image(png: bytes, title: str) -> str:
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def scree_plot(explained_variance: np.ndarray, k: int, target: float) -> bytes:
    """Cumulative explained variance against the number of components, with the target and k."""
    plt, (fig, ax) = _figure()
    cumulative = np.cumsum(explained_variance)
    ax.plot(np.arange(1, len(cumulative) + 1), cumulative, color="tab:blue", label="cumulative")
    ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:g}")
    ax.axvline(k, color="tab:green", linestyle=":", label=f"k = {k}")
    ax.set(xlabel="number of components", ylabel="explained variance ratio", ylim=(0, 1.02))
    ax.set_title("PCA scree (cumulative)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def scatter_plot(scores: np.ndarray, labels: list[str]) -> bytes:
    """The first two principal components, one colour per class."""
    plt, (fig, ax) = _figure(7.0, 5.0)
    classes = sorted(set(labels))
    colours = plt.get_cmap("tab20", max(len(classes), 1))
    labels_array = np.asarray(labels)
    for i, name in enumerate(classes):
        points = scores[labels_array == name]
        ax.scatter(
            points[:, 0],
            points[:, 1] if scores.shape[1] > 1 else np.zeros(len(points)),
            s=14,
            color=colours(i),
            label=name,
        )
    ax.set(xlabel="pc_1", ylabel="pc_2")
    ax.set_title("Training images on the first two components")
    if len(classes) <= 20:
        ax.legend(fontsize=7, loc="best", markerscale=1.2)
    return _png(plt, fig)


def confusion_plot(matrix: np.ndarray, classes: list[str]) -> bytes:
    plt, (fig, ax) = _figure(6.5, 5.5)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        if value:
            ax.text(
                j,
                i,
                str(value),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > matrix.max() / 2 else "black",
            )
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title("Confusion matrix (Test split)")
    return _png(plt, fig)


def thumbnail_sheet(samples: list[tuple[str, bytes]], columns: int = 6, size: int = 64) -> bytes:
    """One image per class, labelled, on a grid: what the input looks like, at a glance."""
    from PIL import Image

    plt = _pyplot()
    rows = max(1, -(-len(samples) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.45), dpi=70, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (label, data) in zip(axes.ravel(), samples, strict=False):
        try:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            image.thumbnail((size, size))
            ax.imshow(np.asarray(image))
        except Exception:  # a sample that does not decode shows its name only
            pass
        ax.set_title(label[:18], fontsize=7)
    return _png(plt, fig)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


THUMBNAIL_CLASSES = 24


def class_thumbnails(images, storage) -> bytes:
    """A sheet of the first image of the first classes (a few small reads on the driver)."""
    first: dict[str, str] = {}
    for f in images:
        if f.label not in first and len(first) < THUMBNAIL_CLASSES:
            first[f.label] = f.path
    samples = []
    for label, path in sorted(first.items()):
        try:
            samples.append((label, storage.read_bytes(path)))
        except Exception:  # unreadable: it is quarantined; show the name only
            samples.append((label, b""))
    return thumbnail_sheet(samples)
