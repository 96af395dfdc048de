"""A tiny GPTModel with the VersatileFFN spec and with the dense spec each overfit a fixed batch."""
import pytest
import torch


@pytest.mark.parametrize("arch", ["vffn", "dense"])
def test_tiny_gpt_overfits_fixed_batch(megatron_tp1, arch):
    from vffn_megatron import GPTConfig, VersatileFFNConfig, build_gpt_model, set_vffn_step

    torch.manual_seed(0)
    cfg = GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=176, seq_length=32,
                    vocab_size=256)
    model = build_gpt_model(cfg, VersatileFFNConfig() if arch == "vffn" else None)
    tokens = torch.randint(0, cfg.vocab_size, (4, cfg.seq_length + 1))
    inp, labels = tokens[:, :-1], tokens[:, 1:]
    pos = torch.arange(cfg.seq_length)[None].expand(4, -1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(50):
        set_vffn_step(model, step)
        loss = model(inp, pos, None, labels=labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 5.0  # ~ln(256) at init
    assert losses[-1] < 0.2 * losses[0], losses[::10]
