"""A DeepSpeed-shaped fake engine for pretrain.checkpoint's save path, and (run under torchrun) a save where one
rank's write fails: every rank must raise the same CheckpointSaveError, nobody hangs, nothing is left behind.

    torchrun --nproc_per_node 2 tests/scripts/ckpt_save_ranks.py CKPT_DIR FAILING_RANK
"""
from __future__ import annotations

import errno
import os
import sys

import torch


class FakeCheckpointEngine:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def save(self, state_dict, path):
        if self.fail and "optim_states" in path:  # a full disk: the file is created, nothing fits
            open(path, "wb").close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        torch.save(state_dict, path)


class FakeEngine:
    """Writes files the way DeepSpeed's save_checkpoint(save_dir, tag) does: save_dir/tag/mp_rank_XX_model_states.pt
    (data-parallel rank 0), save_dir/tag/*zero_pp_rank_R_mp_rank_XX_optim_states.pt (every rank) through
    ``checkpoint_engine.save``, the recovery scripts into save_dir. ``fail``: this rank's optimizer write raises
    ENOSPC after creating an empty file. ``seen``: the save_dir of every call."""

    def __init__(self, rank: int = 0, fail: bool = False, payload: int = 1):
        self.rank, self.fail, self.payload = rank, fail, payload
        self.checkpoint_engine = FakeCheckpointEngine(fail)
        self.seen = []

    def save_checkpoint(self, save_dir, tag=None, client_state=None, save_latest=True):
        self.seen.append(save_dir)
        d = os.path.join(save_dir, tag)
        os.makedirs(d, exist_ok=True)
        if self.rank == 0:
            self.checkpoint_engine.save({"module": {"w": torch.full((256,), float(self.payload))},
                                         **(client_state or {})}, os.path.join(d, "mp_rank_00_model_states.pt"))
        optim = os.path.join(d, f"bf16_zero_pp_rank_{self.rank}_mp_rank_00_optim_states.pt")
        self.checkpoint_engine.save({"state": torch.full((512,), float(self.payload))}, optim)
        if self.rank == 0:
            self._copy_recovery_script(save_dir)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # DeepSpeed's own closing barrier: the failing rank must still reach it
        return True

    def _copy_recovery_script(self, save_path):
        with open(os.path.join(save_path, "zero_to_fp32.py"), "w") as f:
            f.write("# recovery script\n")


def main(ckpt_dir: str, failing_rank: int) -> None:
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from helpers.workspace import tiny_config
    from pretrain.checkpoint import Checkpointer, CheckpointSaveError

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    cfg = tiny_config(f"checkpoint.dir={ckpt_dir}", "parallel.zero_stage=1")
    c = Checkpointer(cfg, dist.get_world_size())
    c.save(FakeEngine(rank), 1, {"step": 1})
    try:
        c.save(FakeEngine(rank, fail=rank == failing_rank), 2, {"step": 2})
    except CheckpointSaveError as e:
        print(f"\nrank {rank} CheckpointSaveError: {e}\n", flush=True)  # whole lines, whatever interleaves
    else:
        print(f"rank {rank} saved without error", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
