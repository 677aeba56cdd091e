"""Tables 3 and 5, the lambda_0 hold-out protocol and the hold-out search (make lambda-search)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from isda_exp.data import Arrays, load_synthetic, take_subsets
from isda_exp.errors import UserError

TINY = ["dataset=synthetic", "dataset.train_size=256", "dataset.test_size=128", "trainer.batch_size=64",
        "trainer.progress=false", "trainer.tensorboard=false"]


# ------------------------------------------------------------------ the hold-out


def numbered(labels: list[int], num_classes: int) -> Arrays:
    """Arrays whose training image i carries its index in its first two pixels (to trace it)."""
    n = len(labels)
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    idx = torch.arange(n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = (idx % 256).to(torch.uint8), (idx // 256).to(torch.uint8)
    x_test = torch.full((7, 3, 32, 32), 255, dtype=torch.uint8)
    return Arrays("cifar10", num_classes, x, torch.tensor(labels), x_test, torch.zeros(7, dtype=torch.int64))


def ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


@pytest.fixture
def imbalanced() -> Arrays:
    rng = np.random.default_rng(0)  # classes of very different sizes: 30..300 images
    labels = np.concatenate([np.full(30 * (c + 1), c) for c in range(10)])
    return numbered(rng.permutation(labels).tolist(), 10)


def test_holdout_is_class_balanced_disjoint_complete_and_replaces_the_test_set(imbalanced):
    a = take_subsets(imbalanced, None, None, seed=0, validation=200)
    assert a.eval_split == "holdout" and imbalanced.eval_split == "test"
    assert np.bincount(a.y_test.numpy(), minlength=10).tolist() == [20] * 10  # exactly N / C each
    held, train = ids(a.x_test), ids(a.x_train)
    assert len(set(held)) == 200 and len(set(train)) == len(imbalanced.y_train) - 200
    assert not set(held) & set(train)  # disjoint
    assert sorted(held + train) == list(range(len(imbalanced.y_train)))  # nothing lost, no test image
    labels = imbalanced.y_train.numpy()
    assert all(labels[i] == y for i, y in zip(held + train, a.y_test.tolist() + a.y_train.tolist()))


def test_holdout_is_seeded_by_the_subset_seed_alone(imbalanced):
    first = ids(take_subsets(imbalanced, None, None, seed=0, validation=100).x_test)
    again = ids(take_subsets(imbalanced, None, None, seed=0, validation=100).x_test)
    other = ids(take_subsets(imbalanced, None, None, seed=1, validation=100).x_test)
    assert first == again and first != other
    # the run seed does not enter: two training runs with different seeds load the same hold-out
    s0 = load_synthetic(train_size=300, test_size=10, validation=50)
    s1 = load_synthetic(train_size=300, test_size=10, validation=50)
    assert torch.equal(s0.x_test, s1.x_test) and torch.equal(s0.x_train, s1.x_train)


def test_subsets_compose_with_the_holdout(imbalanced):
    a = take_subsets(imbalanced, 500, 40, seed=3, validation=200)
    full = take_subsets(imbalanced, None, None, seed=3, validation=200)
    assert len(a.y_train) == 500 and len(a.y_test) == 40 and a.eval_split == "holdout"
    assert set(ids(a.x_train)) <= set(ids(full.x_train))  # train_subset: from the 45,000 that remain
    assert set(ids(a.x_test)) <= set(ids(full.x_test))  # test_subset: from the hold-out


@pytest.mark.parametrize("n, words", [(205, "multiple of the 10 classes"), (0, "positive multiple"),
                                      (400, "class 0")])
def test_bad_holdout_sizes_are_refused(imbalanced, n, words):
    with pytest.raises(UserError, match=words):
        take_subsets(imbalanced, None, None, seed=0, validation=n)


def test_cli_run_on_the_holdout_reports_eval_split(tmp_path):
    run_cli(*TINY, "trainer.epochs=1", "isda=off", "dataset.validation=50", "out_root=o", cwd=tmp_path)
    run_dir = tmp_path / "o/synthetic/resnet32/baseline/baseline/seed0"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_split"] == "holdout"
    assert (summary["train_size"], summary["test_size"]) == (206, 50)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_split"] for r in rows] == ["holdout"]
