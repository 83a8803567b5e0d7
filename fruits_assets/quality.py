"""How good are the PCA features? A classifier trained on Training rows, scored on Test rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fruits_assets.constants import TRAIN_SPLIT
from fruits_assets.errors import FruitsConfigError


@dataclass
class Evaluation:
    accuracy: float
    macro_f1: float
    classes: list[str]
    per_class: pd.DataFrame  # class, precision, recall, f1, support
    confusion: np.ndarray
    train_rows: int
    test_rows: int


# Changing the evaluation changes this (pca_quality's code version).
EVALUATION_VERSION = "logreg-training-to-test-v1"


def evaluate(table: pd.DataFrame, train_split: str = TRAIN_SPLIT, test_split: str = "Test") -> Evaluation:
    """Logistic regression on the pc_* columns of the PCA CSV: Training -> Test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support
    from threadpoolctl import threadpool_limits

    pcs = [c for c in table.columns if c.startswith("pc_")]
    train, test = table[table["split"] == train_split], table[table["split"] == test_split]
    if train.empty or test.empty:
        raise FruitsConfigError(
            f"Evaluation needs rows in both {train_split!r} ({len(train)}) and {test_split!r} ({len(test)})."
        )
    if train["label"].nunique() < 2:
        raise FruitsConfigError("Evaluation needs at least two classes in the Training split.")
    # No standardisation: PCA scores carry their variance as their importance; scaling every
    # component to unit variance would weigh the noise of the last components like the signal.
    model = LogisticRegression(max_iter=3000)
    # One thread: on ~3,000 rows of ~150 components, BLAS's and OpenMP's threads cost more than
    # they give (2 cores: 3.3 s with them, 1.1 s without, same Test accuracy).
    with threadpool_limits(1):
        model.fit(train[pcs].to_numpy(), train["label"].to_numpy())
    predicted = model.predict(test[pcs].to_numpy())
    truth = test["label"].to_numpy()
    classes = sorted(set(train["label"]) | set(truth))
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=classes, zero_division=0)
    return Evaluation(
        accuracy=float(np.mean(predicted == truth)),
        macro_f1=float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0)),
        classes=classes,
        per_class=pd.DataFrame(
            {"class": classes, "precision": precision, "recall": recall, "f1": f1, "support": support}
        ),
        confusion=confusion_matrix(truth, predicted, labels=classes),
        train_rows=len(train),
        test_rows=len(test),
    )
