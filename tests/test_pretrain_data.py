"""pretrain.data's sample order: each DP rank's micro-batches, and the resume offset (consumed samples)."""
import pytest


def _all(total, consumed, mbs, dp):
    from pretrain.data import DataParallelBatchSampler

    return [list(DataParallelBatchSampler(total, consumed, mbs, r, dp)) for r in range(dp)]


def test_ranks_take_disjoint_slices_in_order():
    per_rank = _all(total=16, consumed=0, mbs=2, dp=2)
    assert per_rank[0] == [[0, 1], [4, 5], [8, 9], [12, 13]]
    assert per_rank[1] == [[2, 3], [6, 7], [10, 11], [14, 15]]
    seen = sorted(i for rank in per_rank for batch in rank for i in batch)
    assert seen == list(range(16))  # every sample once


@pytest.mark.parametrize("dp, mbs", [(1, 4), (2, 2), (4, 1)])
def test_same_global_order_for_any_layout(dp, mbs):
    """Micro-batch j of all ranks together covers [j*mbs*dp, (j+1)*mbs*dp): the same global order."""
    per_rank = _all(total=24, consumed=0, mbs=mbs, dp=dp)
    merged = [i for j in range(len(per_rank[0])) for r in range(dp) for i in per_rank[r][j]]
    assert merged == list(range(24))


def test_resume_continues_with_the_next_unseen_sample():
    from pretrain.data import DataParallelBatchSampler

    full = _all(total=32, consumed=0, mbs=2, dp=2)
    resumed = _all(total=32, consumed=12, mbs=2, dp=2)
    for r in range(2):
        assert resumed[r] == full[r][3:]  # 12 samples = 3 micro-batch rounds of 2 x 2
    s = DataParallelBatchSampler(32, 12, 2, 0, 2)
    assert len(s) == len(list(s)) == 5
    assert len(DataParallelBatchSampler(32, 32, 2, 0, 2)) == 0
    assert list(DataParallelBatchSampler(10, 0, 2, 1, 2)) == [[2, 3], [6, 7]]  # an incomplete round is dropped
