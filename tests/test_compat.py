"""isda_exp.compat.ISDALoss with the authors' call `loss, y = criterion(model, fc, x, target, ratio)`
gives the loss, outputs and gradients of the authors' CIFAR ISDA, re-derived here independently in
float64 (their estimator with N x C x A one-hot masks and weights m / (m + n), and their sigma2 =
ratio * diag((W - w_y) Sigma_y (W - w_y)^T) from N x C x C products), step after step as the
statistics accumulate; and in a user's own DDP loop (2 gloo ranks) every rank holds the global
batch's statistics and trains as one process on the global batch, while the wrong placements of
the loss and the classifier are refused."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from conftest import start_ranks
from isda_exp.compat import ISDALoss, Pair

A, C = 6, 4


class AuthorsISDA:
    """The authors' CIFAR ISDA as their code computes it (masks and all), float64."""

    def __init__(self, feature_num: int, class_num: int):
        self.C = class_num
        self.CoVariance = torch.zeros(class_num, feature_num, feature_num, dtype=torch.float64)
        self.Ave = torch.zeros(class_num, feature_num, dtype=torch.float64)
        self.Amount = torch.zeros(class_num, dtype=torch.float64)

    def update_CV(self, features, labels):  # noqa: N802
        N, A_ = features.shape
        onehot = torch.zeros(N, self.C, dtype=torch.float64).scatter_(1, labels.view(-1, 1), 1)
        mask = onehot.view(N, self.C, 1).expand(N, self.C, A_)
        by_class = features.view(N, 1, A_).expand(N, self.C, A_) * mask
        amount = mask.sum(0)
        amount[amount == 0] = 1
        ave = by_class.sum(0) / amount
        centred = by_class - ave.expand(N, self.C, A_) * mask
        var = torch.bmm(centred.permute(1, 2, 0), centred.permute(1, 0, 2)) / amount.view(self.C, A_, 1)
        m = onehot.sum(0)
        w = m / (m + self.Amount)
        w[w != w] = 0  # 0 / 0 for a class never seen
        w_cv, w_av = w.view(-1, 1, 1), w.view(-1, 1)
        diff = self.Ave - ave
        extra = w_cv * (1 - w_cv) * torch.bmm(diff.view(self.C, A_, 1), diff.view(self.C, 1, A_))
        self.CoVariance = self.CoVariance * (1 - w_cv) + var * w_cv + extra
        self.Ave = self.Ave * (1 - w_av) + ave * w_av
        self.Amount = self.Amount + m

    def __call__(self, model, fc, x, target, ratio):
        features = model(x)
        y = fc(features)
        self.update_CV(features.detach(), target)
        N = len(target)
        W = fc.weight.expand(N, self.C, features.shape[1])
        W_y = torch.gather(W, 1, target.view(N, 1, 1).expand(N, self.C, features.shape[1]))
        sigma2 = ratio * torch.bmm(torch.bmm(W - W_y, self.CoVariance[target]), (W - W_y).permute(0, 2, 1))
        sigma2 = (sigma2 * torch.eye(self.C, dtype=torch.float64).expand(N, self.C, self.C)).sum(2)
        return F.cross_entropy(y + 0.5 * sigma2, target), y


def models(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, A)).double()
    return net, nn.Linear(A, C).double()


def batches(n_steps: int = 5, size: int = 12):
    gen = torch.Generator().manual_seed(3)
    out = []
    for step in range(n_steps):
        y = torch.randint(0, C if step else 2, (size,), generator=gen)  # classes appear late
        out.append((torch.randn(size, 10, generator=gen, dtype=torch.float64) + y.view(-1, 1), y))
    return out


def test_the_authors_call_gives_their_loss_outputs_and_gradients_step_by_step():
    net, fc = models()
    net_ref, fc_ref = copy.deepcopy(net), copy.deepcopy(fc)
    ours, theirs = ISDALoss(A, C).double(), AuthorsISDA(A, C)
    opt = torch.optim.SGD([*net.parameters(), *fc.parameters()], lr=0.1)
    opt_ref = torch.optim.SGD([*net_ref.parameters(), *fc_ref.parameters()], lr=0.1)
    for step, (x, y) in enumerate(batches()):
        ratio = 0.5 * step / 5
        loss, out = ours(net, fc, x, y, ratio)
        loss_ref, out_ref = theirs(net_ref, fc_ref, x, y, ratio)
        torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-13)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=1e-13)
        opt.zero_grad(), opt_ref.zero_grad()
        loss.backward(), loss_ref.backward()
        for p, q in zip([*net.parameters(), *fc.parameters()], [*net_ref.parameters(), *fc_ref.parameters()]):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
        opt.step(), opt_ref.step()
        torch.testing.assert_close(ours.estimator.CoVariance, theirs.CoVariance, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours.estimator.Ave, theirs.Ave, rtol=1e-12, atol=1e-12)
        assert torch.equal(ours.estimator.Amount, theirs.Amount)
    assert float(loss.detach()) != float(F.cross_entropy(out.detach(), y))  # augmentation on


# ------------------------------------------------------------------ a user's DDP loop


def ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net, fc = models()
        pair = nn.parallel.DistributedDataParallel(Pair(net, fc))
        criterion = ISDALoss(A, C).double()
        opt = torch.optim.SGD(pair.parameters(), lr=0.1)
        for step, (x, y) in enumerate(batches()):
            part = slice(0, 5) if rank == 0 else slice(5, None)  # uneven shares of the global batch
            loss, _ = criterion(pair, fc, x[part], y[part], 0.1 * step)
            opt.zero_grad()
            (loss * len(y[part]) * world / len(y)).backward()  # DDP averages: the global mean loss
            opt.step()
        refused, misplaced = [], ISDALoss(A, C).double()
        holder = Pair(net, fc)
        holder.loss = misplaced  # the loss inside the module DDP wraps
        inside = nn.parallel.DistributedDataParallel(holder)
        for loss_, model, classifier in ((misplaced, inside, fc),
                                         (ISDALoss(A, C).double(), pair,
                                          nn.parallel.DistributedDataParallel(fc))):
            try:
                loss_(model, classifier, x[part], y[part], 0.1)
            except ValueError as e:
                refused.append(str(e))
        torch.save({"stats": criterion.state_dict(), "params": [p.detach() for p in pair.parameters()],
                    "refused": refused}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_in_a_users_ddp_loop_train_as_one_process_on_the_global_batch(tmp_path):
    start_ranks(ddp_worker, (2, str(tmp_path / "init"), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    net, fc = models()  # one process, the whole global batch
    criterion = ISDALoss(A, C).double()
    opt = torch.optim.SGD([*net.parameters(), *fc.parameters()], lr=0.1)
    for step, (x, y) in enumerate(batches()):
        loss, _ = criterion(net, fc, x, y, 0.1 * step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for got in ranks:
        for key, value in criterion.state_dict().items():
            torch.testing.assert_close(got["stats"][key], value, rtol=1e-12, atol=1e-12)
        for p, q in zip(got["params"], [*net.parameters(), *fc.parameters()]):
            torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-12)
        inside, wrapped_fc = got["refused"]
        assert "inside the DistributedDataParallel module" in inside
        assert "wrapped in DistributedDataParallel on its own" in wrapped_fc


def test_the_compat_loss_is_the_projects_loss_with_the_authors_names():
    from isda_exp.losses import ISDALoss as Projects

    net, fc = models()
    x, y = batches()[1]
    a, b = ISDALoss(A, C).double(), Projects(A, C).double()
    torch.testing.assert_close(a(net, fc, x, y, 0.3)[0], b(net(x), fc, y, 0.3)[0], rtol=0, atol=0)
    assert a.state_dict().keys() == b.state_dict().keys()  # checkpoints are interchangeable
    with pytest.raises(ValueError, match="features must be"):
        a(lambda t: t, fc, x, y, 0.3)  # a model returning logits-sized or raw input
