"""ISDALoss under torch.distributed: two gloo processes, each feeding its part of every global
batch, must both hold exactly the statistics one process computes on the whole global batch."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from conftest import start_ranks
from isda_exp.losses import COVARIANCES, ISDALoss

A, C, RATIO = 5, 4, 0.6


def batches():
    """(features, labels, rows of rank 0): uneven splits, one where the ranks share no class."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for size, split, disjoint in ((16, 8, False), (9, 1, False), (10, 6, True), (7, 5, False)):
        y = torch.randint(0, C, (size,), generator=gen)
        if disjoint:
            y = torch.cat([torch.randint(0, 2, (split,), generator=gen),
                           torch.randint(2, C, (size - split,), generator=gen)])
        x = torch.randn(size, A, generator=gen, dtype=torch.float64) * 2 + 3
        out.append((x, y, split))
    return out


def make(mode):
    torch.manual_seed(0)
    return ISDALoss(A, C, mode).double(), torch.nn.Linear(A, C).double()


def worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        results = {}
        for mode in COVARIANCES:
            crit, fc = make(mode)
            losses = []
            for x, y, split in batches():
                part = slice(0, split) if rank == 0 else slice(split, None)
                losses.append(crit(x[part], fc, y[part], RATIO)[0].detach())
            results[mode] = (crit.state_dict(), torch.stack(losses))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_hold_the_one_process_statistics_of_the_global_batch(tmp_path):
    start_ranks(worker, (2, str(tmp_path / "init"), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for mode in COVARIANCES:
        crit, fc = make(mode)  # one process, whole global batches
        want_losses = [[], []]
        for x, y, split in batches():
            crit.update_statistics(x, y)
            for r, part in enumerate((slice(0, split), slice(split, None))):
                aug = crit.augmented_logits(fc(x[part]), fc.weight, y[part], RATIO)
                want_losses[r].append(F.cross_entropy(aug, y[part]).detach())
        for r, (state, losses) in enumerate(r_[mode] for r_ in ranks):
            assert state.keys() == crit.state_dict().keys()
            for key, value in crit.state_dict().items():
                torch.testing.assert_close(state[key], value, rtol=1e-12, atol=1e-12)
                assert torch.equal(state[key], ranks[0][mode][0][key])  # ranks agree bit for bit
            torch.testing.assert_close(losses, torch.stack(want_losses[r]), rtol=1e-12, atol=0)
        assert int(crit.counts.sum()) == sum(len(y) for _, y, _ in batches())
