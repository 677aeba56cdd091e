"""The numbers of an evaluation: the plain logits of every image on the unaugmented evaluation
stream, summed batch by batch exactly as the training loop's test pass sums them
(training.engine.Engine.evaluate), so a run evaluates to the test_loss and test_error of its last
metrics row; plus top-5, per-class error and each image's prediction."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..rundir.files import atomic_write
from .source import Evaluated

TOP = 5


@dataclass
class Evaluation:
    """Every figure of one evaluation; `rows` holds each image's prediction (in stream order)."""

    num_images: int
    num_classes: int
    test_loss: float
    test_error: float
    test_error_top5: float
    per_class_error: list[float | None]  # None for a class without images
    per_class_count: list[int]
    rows: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "rows"}


@torch.inference_mode()
def evaluate(ev: Evaluated, keep_rows: bool = True) -> Evaluation:
    """The model of `ev` over its data's evaluation split (one process)."""
    engine, data = ev.engine, ev.data
    engine.net.eval()
    stream = data.eval_stream(engine.device)
    names = _names(data)
    loss_sum, wrong, wrong5, rows = 0.0, 0, 0, []
    C = data.num_classes
    per_wrong, per_count = torch.zeros(C, dtype=torch.int64), torch.zeros(C, dtype=torch.int64)
    for x, y in stream.batches(ev.batch_size):
        with engine.autocast():
            logits = engine.fc(engine.forward(engine.inputs(x))).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()  # as Engine.evaluate
        pred = logits.argmax(1)
        wrong += (pred != y).sum().item()
        top = logits.topk(min(TOP, C), 1).indices
        wrong5 += (top != y.unsqueeze(1)).all(1).sum().item()
        y_cpu, miss = y.cpu(), (pred != y).cpu().long()
        per_count += torch.bincount(y_cpu, minlength=C)
        per_wrong += torch.bincount(y_cpu, weights=miss, minlength=C).long()
        if keep_rows:
            rows += _rows(logits.cpu(), y_cpu, top.cpu(), names, len(rows))
    n = stream.num_images
    per_class = [100.0 * int(w) / int(c) if c else None for w, c in zip(per_wrong, per_count)]
    return Evaluation(n, C, loss_sum / n, 100.0 * wrong / n, 100.0 * wrong5 / n, per_class,
                      per_count.tolist(), rows)


def _names(data) -> list[str] | None:
    """The evaluation files' paths under the data set's root (image folders), else None."""
    import os

    files = getattr(data, "eval_files", None)
    if files is None:
        return None
    return [os.path.relpath(os.path.join(data.eval_root, os.fsdecode(f)), data.root) for f in files]


def _rows(logits, y, top, names, start: int) -> list[dict]:
    probs = logits.softmax(1)
    losses = F.cross_entropy(logits, y, reduction="none")
    out = []
    for i in range(len(y)):
        k = start + i
        out.append({"index": k, "file": names[k] if names else "", "label": int(y[i]),
                    "prediction": int(top[i, 0]), "correct": int(top[i, 0] == y[i]),
                    "top5": " ".join(str(int(c)) for c in top[i]),
                    "probability": f"{float(probs[i, top[i, 0]]):.6f}",
                    "loss": f"{float(losses[i]):.6f}"})
    return out


def write_csv(result: Evaluation, path: str, classes: list[str] | None = None) -> None:
    """One row per image: index, file, label, prediction (and their class names), top-5, the
    predicted class's probability and the image's cross-entropy; written atomically."""
    fields = ["index", "file", "label", "label_name", "prediction", "prediction_name", "correct",
              "top5", "probability", "loss"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({**row, "label_name": classes[row["label"]] if classes else "",
                         "prediction_name": classes[row["prediction"]] if classes else ""})
    atomic_write(path, lambda f: f.write(text.getvalue().encode("utf-8")))
