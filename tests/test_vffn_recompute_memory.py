"""Loop recomputation keeps the saved activations of the recursive loop (nearly) flat in D."""


def test_saved_bytes_with_and_without_recompute(megatron_tp1):
    from vffn_megatron.profiling import recompute_memory_table

    hidden, ffn, tokens = 64, 176, 256
    t = recompute_memory_table(hidden, ffn, tokens)
    print("\nD | saved no-recompute | saved recompute (bytes)")
    for d in (1, 2, 4, 8):
        print(d, t[(d, False)], t[(d, True)])
    for d in (1, 2, 4, 8):
        assert t[(d, True)] < t[(d, False)]
    grow_off = t[(8, False)] - t[(1, False)]
    grow_on = t[(8, True)] - t[(1, True)]
    # With recompute each extra loop keeps only its running delta (tokens x hidden fp32) for the depth mixing.
    assert grow_on <= 7 * tokens * hidden * 4 * 1.05
    assert grow_on < 0.15 * grow_off
    # the compacted backward (the default) keeps the hidden activations of a token's sampled loops only: at
    # D = 8 about E[L] / D of the full algorithm's
    full = recompute_memory_table(hidden, ffn, tokens, depths=(8,), compact=False)
    assert t[(8, False)] < 0.8 * full[(8, False)]
