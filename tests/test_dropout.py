"""The CPU dropout (`_utils/speedups.py`) is dropout as RECIPE.md has it: p = 0.1 on hidden states and on attention
probabilities, kept values scaled by 1 / (1 - p); only the way the random bits are drawn differs from torch's."""
import math

import pytest
import torch
import torch.nn as nn

from _utils.speedups import ATTENTION, FastDropout, fast_dropout, keep_mask, sdpa_fast_dropout, use_fast_dropout
from _utils.electra import build_models


@pytest.mark.parametrize('p', [0.1, 0.5])
def test_drop_rate_is_p(p):
    torch.manual_seed(0)
    n = 4_000_000
    dropped = (~keep_mask((n,), p)).sum().item()
    se = math.sqrt(p * (1 - p) / n)
    assert abs(dropped / n - p) < 5 * se, f'dropped {dropped / n:.5f}, expected {p} +- {5 * se:.5f}'


def test_decisions_are_independent_of_position():
    # Eight elements share one 64-bit draw: each byte position must drop at rate p, neighbours independently
    torch.manual_seed(0)
    drop = ~keep_mask((4_000_000,), 0.1)
    se = math.sqrt(0.1 * 0.9 / (len(drop) // 8))
    for k in range(8):
        assert abs(drop[k::8].float().mean().item() - 0.1) < 5 * se
    a, b = drop[:-1].float(), drop[1:].float()
    assert abs((a * b).mean().item() - 0.01) < 5 * math.sqrt(0.01 * 0.99 / (len(a) // 2))  # P(both dropped) = p^2


def test_top_byte_decides_and_ties_draw_the_low_bits():
    # The rule is "drop iff 32 random bits < p * 2^32", drawn top byte first. Replay the same draw with the same seed:
    # away from the threshold's top byte (25 for p = 0.1) the top byte alone decides; at it, the low 24 bits decide,
    # which drops with probability (p * 2^32 - 25 * 2^24) / 2^24 = 0.6.
    n = 4_000_003  # not a multiple of 8
    torch.manual_seed(5)
    top = torch.empty(-(-n // 8), dtype=torch.int64).random_(-2**63, None).view(torch.uint8)[:n]
    torch.manual_seed(5)
    keep = keep_mask((n,), 0.1)
    hi, lo = round(0.1 * 2**32) >> 24, round(0.1 * 2**32) & 0xFFFFFF
    assert hi == 25
    assert torch.equal(keep[top != hi], top[top != hi] > hi)
    tied = ~keep[top == hi]
    rate, q = tied.float().mean().item(), lo / 2**24
    assert len(tied) > 10_000 and abs(rate - q) < 5 * math.sqrt(q * (1 - q) / len(tied))


@pytest.mark.parametrize('shape', [(1,), (7,), (3, 5, 11)])
def test_mask_of_any_shape(shape):
    assert keep_mask(shape, 0.1).shape == shape and keep_mask(shape, 0.5).shape == shape


def test_kept_values_scaled_by_one_over_keep_probability_and_gradient_matches():
    torch.manual_seed(0)
    x = torch.randn(1000, 64, requires_grad=True)
    y = fast_dropout(x, 0.1)
    kept = y != 0
    assert 0.85 < kept.float().mean().item() < 0.95
    torch.testing.assert_close(y[kept], x[kept].detach() / 0.9)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)  # dy/dx = mask / (1 - p)


def test_same_seed_same_mask():
    x = torch.randn(4096)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    torch.testing.assert_close(fast_dropout(x, 0.1), a, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_dropout_draws_the_same_mask_in_one_graph():
    # Under torch.compile the mask is the custom operator `dropout_mask` (inductor's own CPU random numbers are
    # slow): fullgraph=True fails on any graph break; the compiled layer must give the eager layer's mask and
    # gradient for the same seed.
    layer = FastDropout(0.1).train()
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4096, 64, requires_grad=True)
    torch.manual_seed(3)
    y = compiled(x)
    y.sum().backward()
    torch.manual_seed(3)
    expected = layer(x.detach())
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=0)
    kept = (expected != 0).float()
    assert 0.09 < 1 - kept.mean().item() < 0.11
    torch.testing.assert_close(x.grad, kept / 0.9)


def test_layer_is_identity_in_eval_mode_and_for_p_zero():
    x = torch.randn(8, 16)
    assert torch.equal(FastDropout(0.1).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_attention_math_with_dropout_and_padding():
    torch.manual_seed(0)
    B, H, L, D = 2, 4, 16, 8
    q, k, v = (torch.randn(B, H, L, D) for _ in range(3))
    attend = torch.ones(B, 1, L, L, dtype=torch.bool)
    attend[1, ..., 12:] = False  # the second sequence has 4 padding tokens
    module = nn.Module().train()
    torch.manual_seed(1)
    out, _ = sdpa_fast_dropout(module, q, k, v, attend, dropout=0.1, scaling=D ** -0.5)
    # Reference: softmax(QK^T / sqrt(D) + mask), the same keep mask (same seed), scaled by 1 / 0.9, times V
    torch.manual_seed(1)
    scores = (q @ k.transpose(2, 3)) / math.sqrt(D) + torch.where(attend, 0.0, -math.inf)
    probs = scores.softmax(-1) * keep_mask((B, H, L, L), 0.1) / 0.9
    torch.testing.assert_close(out, (probs @ v).transpose(1, 2))
    assert out.shape == (B, L, H, D)


def test_attention_without_dropout_is_torch_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8) for _ in range(3))
    module = nn.Module().eval()
    module.is_causal = False  # an encoder's self-attention, as in ELECTRA
    out, _ = sdpa_fast_dropout(module, q, k, v, None, dropout=0.0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    torch.testing.assert_close(out, expected)


def test_cpu_training_without_dropout_runs_the_math_with_sdpas_values_and_gradients():
    # --dropout 0 (the CPU recipe): the math path, not SDPA's CPU flash kernel, whose backward is slow at small sizes
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    attend = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    attend[1, ..., 10:] = False
    module = nn.Module().train()
    out, _ = sdpa_fast_dropout(module, q, k, v, attend, dropout=0.0, scaling=8 ** -0.5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attend).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), (q, k, v))):
        torch.testing.assert_close(got, want)


def test_use_fast_dropout_swaps_every_dropout_and_keeps_eval_outputs_and_export(tmp_path):
    torch.manual_seed(0)
    generator, discriminator = build_models('tiny')
    plain = build_models('tiny')[1]
    plain.load_state_dict(discriminator.state_dict())
    n_dropouts = sum(type(m) is nn.Dropout for m in plain.modules())
    use_fast_dropout(discriminator)
    assert n_dropouts > 0 and sum(isinstance(m, FastDropout) for m in discriminator.modules()) == n_dropouts
    assert discriminator.config._attn_implementation == ATTENTION
    ids = torch.randint(1000, 2000, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    torch.testing.assert_close(discriminator.eval()(input_ids=ids, attention_mask=mask).logits,
                               plain.eval()(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)
    # The exported model is a plain Hugging Face ELECTRA: nothing of this module is written into config.json
    discriminator.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / 'config.json').read_text()


def test_training_step_uses_fast_dropout_on_cpu(tokenizer):
    from _utils.pretraining import build_electra
    electra = build_electra('tiny', tokenizer).train()
    layers = [m for m in electra.modules() if isinstance(m, nn.Dropout)]
    assert layers and all(isinstance(m, FastDropout) for m in layers)
    assert electra.generator.config._attn_implementation == electra.discriminator.config._attn_implementation == \
        ATTENTION
