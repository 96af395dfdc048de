"""Training / validation data: megatron-core GPTDataset blends, read in per-data-parallel-rank shares.

Sample order is megatron's: global batch g holds samples [g*GBS, (g+1)*GBS) of the (already shuffled)
blended dataset; micro-batch j of a step is the chunk [j*mbs*dp, (j+1)*mbs*dp) of it, and DP rank r takes
its r-th slice of mbs samples. All TP ranks of a DP rank read the same samples. The only data state is
``consumed_samples`` (saved in checkpoints), so a resumed run continues with the next unseen sample.
"""
from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.distributed as dist

from vffn_megatron.device import use_cuda

from .config import RunConfig


class DataParallelBatchSampler:
    """Yields this DP rank's micro-batches (lists of sample indices) from ``consumed`` onwards."""

    def __init__(self, total: int, consumed: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.total, self.consumed = total, consumed
        self.mbs, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.mbs * self.dp_size
        start = self.consumed
        while start + step <= self.total:
            first = start + self.dp_rank * self.mbs
            yield list(range(first, first + self.mbs))
            start += step

    def __len__(self) -> int:
        return max(0, (self.total - self.consumed) // (self.mbs * self.dp_size))


def index_cache_dir(cfg: RunConfig) -> str:
    """Megatron's sample-index cache for this data: ``<data cache dir>/index-<fingerprint>``.

    Megatron names its cache files by dataset *path* (and seed, split, sizes), so data re-preprocessed
    to the same prefix would reuse stale indices (wrong samples, or an IndexError). The folder is keyed
    by the content fingerprints of all blended datasets (vffn_data.identity): changed data gets a fresh
    cache, unchanged data the same one (and megatron's deterministic indices: the same data order)."""
    from vffn_data.identity import blend_fingerprint

    return os.path.join(cfg.data_cache_dir, "index-" + blend_fingerprint([e.path for e in cfg.data.datasets]))


def dataset_config(cfg: RunConfig, tokenizer):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    d = cfg.data
    return GPTDatasetConfig(
        random_seed=d.seed,
        sequence_length=cfg.model.seq_length,
        blend=([e.path for e in d.datasets], [e.weight for e in d.datasets]),
        split=d.split,
        path_to_cache=index_cache_dir(cfg),
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,  # causal attention without an explicit mask
        mmap_bin_files=True,
    )


def build_datasets(cfg: RunConfig, tokenizer, world_size: int):
    """(train, valid or None) top-level datasets; a collective: every rank calls it.

    Every rank builds (is_built_on_rank -> True) so every rank can read its own share; rank 0 writes
    the index cache first, the others load it (the cache dir must be on a filesystem all nodes see).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    s = cfg.schedule
    train_samples = s.train_steps * s.global_batch_size
    valid_samples = s.eval_iters * s.global_batch_size if s.eval_interval > 0 else 0
    os.makedirs(index_cache_dir(cfg), exist_ok=True)
    builder = BlendedMegatronDatasetBuilder(GPTDataset, [train_samples, valid_samples, 0],
                                            lambda: True, dataset_config(cfg, tokenizer))
    try:
        train, valid, _ = builder.build()
    except FileNotFoundError as e:
        if dist.is_initialized() and dist.get_rank() != 0 and cfg.data_cache_dir in str(e):
            raise RuntimeError(f"rank {dist.get_rank()} cannot read the dataset index cache rank 0 wrote in "
                               f"{cfg.data_cache_dir}: data.cache_dir (default <output_dir>/data_cache) must be "
                               f"on a filesystem every node sees") from e
        raise
    if train is None or len(train) < train_samples:
        raise RuntimeError(f"the training split has {0 if train is None else len(train)} samples, fewer than the "
                           f"{train_samples} needed (schedule.train_steps x global_batch_size)")
    if s.eval_interval > 0 and (valid is None or len(valid) < valid_samples):
        raise RuntimeError("the validation split is empty or too small: give data.split a larger valid share or "
                           "more data, or lower schedule.eval_iters")
    return train, (valid if s.eval_interval > 0 else None)


def loader(dataset, cfg: RunConfig, consumed: int, total: int, dp_rank: int, dp_size: int):
    sampler = DataParallelBatchSampler(total, consumed, cfg.schedule.micro_batch_size, dp_rank, dp_size)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers,
        pin_memory=use_cuda(), persistent_workers=False,
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def data_signature(cfg: RunConfig) -> dict:
    """What ``consumed_samples`` is relative to; compared on resume."""
    return {
        "datasets": [[os.path.abspath(e.path), e.weight] for e in cfg.data.datasets],
        "split": cfg.data.split, "seed": cfg.data.seed, "seq_length": cfg.model.seq_length,
        "global_batch_size": cfg.schedule.global_batch_size, "train_steps": cfg.schedule.train_steps,
    }
