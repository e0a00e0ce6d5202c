"""Quantizers under torch.distributed (gloo, two real processes): every rank keeps the same tables."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparse_vqvae.quantizers import build_quantizer

from .tiny import SELECTION_FNS, tiny_config

pytestmark = pytest.mark.slow  # two real processes per case (torch.distributed, gloo)


def _worker(rank: int, init_file: str, selection_fn: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different starting tables: the broadcast must align them
        quantizer = build_quantizer(tiny_config(selection_fn)).train()
        g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        for step in range(4):
            z = torch.randn(2 + rank, 8, 4, 4, generator=g)  # uneven batches
            if rank == 1 and step == 2:
                z = torch.zeros_like(z)  # a rank with no non-zero coefficient at all
            quantizer(z)
            quantizer.after_step()
        state = {k: v.clone() for k, v in quantizer.state_dict().items()}
        results[rank] = state
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_ranks_keep_identical_codebooks_and_statistics(selection_fn, tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(str(tmp_path / "init"), selection_fn, results), nprocs=2, join=True)
        a, b = results[0], results[1]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
