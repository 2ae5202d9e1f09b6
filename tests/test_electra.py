"""One pretraining step, as RECIPE.md states it ("Model sizes", "One pretraining step")."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from _utils import electra as electra_module
from _utils.electra import (ElectraLoss, ElectraOutput, discriminator_loss, electra_configs, mask_positions,
                            max_predictions_for, mlm_loss, replace_masked, sample_from_softmax)
from _utils.pretraining import build_electra

PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIALS = torch.tensor([PAD, CLS, SEP, MASK])
V = 30_522


def assert_rate(hits, n, p, sigmas=4):
    se = math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) < sigmas * se, f'observed rate {hits / n:.4f}, expected {p:.4f} +- {sigmas * se:.4f}'


def batch(real_lengths, L=128, seed=0):
    """`[CLS] body [SEP]` rows of random word ids, padded to L; token types 0 then 1 over the real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 29_000, (len(real_lengths), L), generator=g)
    types = torch.zeros_like(ids)
    for row, n in enumerate(real_lengths):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = CLS, SEP, PAD
        types[row, n // 2:n] = 1
    return ids, types


@pytest.fixture(scope='module')
def electra(tokenizer):
    torch.manual_seed(0)
    return build_electra('tiny', tokenizer).eval()


def record_masking(monkeypatch):
    """The (positions, weight) of every `mask_positions` call the step makes."""
    calls = []

    def recording(*args, **kwargs):
        calls.append(mask_positions(*args, **kwargs))
        return calls[-1]
    monkeypatch.setattr(electra_module, 'mask_positions', recording)
    return calls


def run_step(electra, ids, types):
    """One forward; also returns the generator's and the discriminator's input ids."""
    seen = {}
    hooks = [electra.generator.electra.register_forward_pre_hook(
                 lambda m, a, kw: seen.__setitem__('generator', kw['input_ids']), with_kwargs=True),
             electra.discriminator.register_forward_pre_hook(
                 lambda m, a, kw: seen.__setitem__('discriminator', kw['input_ids']), with_kwargs=True)]
    try: out = electra(ids, types)
    finally:
        for h in hooks: h.remove()
    return out, seen['generator'], seen['discriminator']


# ---------------------------------------------------------------------------------------------------------------
# Model sizes
# ---------------------------------------------------------------------------------------------------------------
def test_small_discriminator_is_256_hidden_12_layers_4_heads_1024_ffn_128_embeddings():
    _, disc = electra_configs('small')
    assert (disc.hidden_size, disc.num_hidden_layers, disc.num_attention_heads, disc.intermediate_size,
            disc.embedding_size) == (256, 12, 4, 1024, 128)


def test_small_generator_is_quarter_width_same_depth():
    gen, disc = electra_configs('small')
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == (64, 1, 256)
    assert gen.num_hidden_layers == disc.num_hidden_layers == 12
    assert gen.embedding_size == disc.embedding_size == 128      # the shared embedding block


def test_base_and_large_shapes():
    gen, disc = electra_configs('base')
    assert (disc.hidden_size, disc.num_hidden_layers, disc.num_attention_heads, disc.intermediate_size,
            disc.embedding_size) == (768, 12, 12, 3072, 768)
    assert gen.hidden_size == 768 // 3 and gen.num_hidden_layers == 12
    gen, disc = electra_configs('large')
    assert (disc.hidden_size, disc.num_hidden_layers, disc.num_attention_heads, disc.intermediate_size,
            disc.embedding_size) == (1024, 24, 16, 4096, 1024)
    assert gen.hidden_size == 1024 // 4 and gen.num_hidden_layers == 24


def test_common_hyperparameters_dropout_gelu_layernorm_init_positions_vocab():
    for config in electra_configs('small'):
        assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob, config.hidden_act,
                config.layer_norm_eps, config.initializer_range, config.max_position_embeddings,
                config.vocab_size) == (0.1, 0.1, 'gelu', 1e-12, 0.02, 512, 30_522)


# ---------------------------------------------------------------------------------------------------------------
# 1. Masking
# ---------------------------------------------------------------------------------------------------------------
def test_19_masked_slots_at_length_128():
    assert max_predictions_for(128, 0.15) == 19


@pytest.mark.parametrize('n_real', [3, 20, 40, 77, 100, 127, 128])
def test_used_slots_are_round_15pct_of_non_pad_tokens_at_least_1(n_real):
    ids, _ = batch([n_real])
    _, weight = mask_positions(ids, (ids != PAD).long(), SPECIALS, 0.15, max_predictions_for(128, 0.15))
    assert weight.shape == (1, 19)
    assert weight.sum().item() == max(1, min(19, round(0.15 * n_real)))


def test_used_slots_are_clipped_to_max_predictions_19():
    ids, _ = batch([200], L=256)                              # round(0.15 * 200) = 30 > 19
    _, weight = mask_positions(ids, (ids != PAD).long(), SPECIALS, 0.15, 19)
    assert weight.sum().item() == 19


def test_cls_sep_mask_and_padding_are_never_masked():
    ids, _ = batch([128, 90, 40, 12, 5] * 100)
    ids[:, 3] = MASK                                           # a [MASK] already in the text
    ids[:, 2] = SEP                                            # and a [SEP] in the middle
    positions, weight = mask_positions(ids, (ids != PAD).long(), SPECIALS, 0.15, 19)
    chosen = ids.gather(1, positions)[weight.bool()]
    assert chosen.numel() > 1000
    assert not torch.isin(chosen, SPECIALS).any()


def test_masked_slots_85pct_mask_15pct_kept_0pct_random():
    torch.manual_seed(0)
    ids, _ = batch([128] * 2000)                               # full rows: all 19 slots in use
    positions, weight = mask_positions(ids, (ids != PAD).long(), SPECIALS, 0.15, 19)
    originals = ids.gather(1, positions)
    gen_input = replace_masked(ids, positions, weight, originals, MASK)
    shown = gen_input.gather(1, positions)[weight.bool()]
    originals = originals[weight.bool()]
    n = shown.numel()
    assert_rate(int((shown == MASK).sum()), n, 0.85)
    assert_rate(int((shown == originals).sum()), n, 0.15)
    assert int(((shown != MASK) & (shown != originals)).sum()) == 0    # no random tokens


def test_masked_slots_85pct_mask_also_in_short_rows():
    torch.manual_seed(0)
    ids, _ = batch([40] * 2000)                                # 6 used slots, 13 unused
    positions, weight = mask_positions(ids, (ids != PAD).long(), SPECIALS, 0.15, 19)
    originals = ids.gather(1, positions)
    gen_input = replace_masked(ids, positions, weight, originals, MASK)
    shown = gen_input.gather(1, positions)[weight.bool()]
    assert_rate(int((shown == MASK).sum()), shown.numel(), 0.85)


def test_masking_is_dynamic():
    ids, _ = batch([128] * 4)
    first, _ = mask_positions(ids, (ids != PAD).long(), SPECIALS, 0.15, 19)
    second, _ = mask_positions(ids, (ids != PAD).long(), SPECIALS, 0.15, 19)
    assert not torch.equal(first, second)


# ---------------------------------------------------------------------------------------------------------------
# 2-4. Generator, sample, labels
# ---------------------------------------------------------------------------------------------------------------
def test_generator_logits_only_at_the_19_masked_slots(electra):
    out = electra(*batch([128, 90, 40]))
    assert out.mlm_logits.shape == (3, 19, V)
    assert out.masked_ids.shape == out.sampled_ids.shape == out.masked_weight.shape == (3, 19)
    assert out.disc_logits.shape == out.is_replaced.shape == (3, 128)


def test_discriminator_never_sees_mask(electra):
    torch.manual_seed(0)
    for seed in range(3):
        _, gen_input, disc_input = run_step(electra, *batch([128, 90, 40, 12], seed=seed))
        assert (gen_input == MASK).sum() > 0
        assert (disc_input == MASK).sum() == 0


def test_is_replaced_exactly_where_discriminator_input_differs_from_original(electra, monkeypatch):
    torch.manual_seed(0)
    masking = record_masking(monkeypatch)
    ids, types = batch([128, 90, 40, 12])
    out, _, disc_input = run_step(electra, ids, types)
    assert torch.equal(out.is_replaced, disc_input != ids)
    assert out.is_replaced.any()
    # and only masked positions can be replaced
    (positions, weight), = masking
    masked_here = torch.zeros(ids.shape).scatter_add(1, positions, weight) > 0   # (B, L) used-slot positions
    assert not (out.is_replaced & ~masked_here).any()


def test_sample_equal_to_original_is_labelled_real(electra, monkeypatch):
    # Make the generator "sample" token 2000 everywhere: row 0 is all 2000s, so every sample equals the original
    ids, types = batch([128, 128])
    ids[0, 1:127], ids[1, 1:127] = 2000, 3000
    monkeypatch.setattr(electra_module, 'sample_from_softmax',
                        lambda logits, *a, **k: torch.full(logits.shape[:-1], 2000, dtype=torch.long))
    masking = record_masking(monkeypatch)
    out = electra(ids, types)
    (positions, weight), = masking
    assert weight.all()                                        # full rows: 19 slots in use
    assert not out.is_replaced[0].any()                        # sampled == original -> real
    expected = torch.zeros(128, dtype=torch.bool).index_fill(0, positions[1], True)
    assert torch.equal(out.is_replaced[1], expected)           # sampled != original -> replaced, nowhere else


@pytest.mark.parametrize('nothing_maskable', [[CLS, SEP], [CLS, MASK, SEP, MASK, SEP]])
def test_a_row_with_nothing_to_mask_is_left_untouched_and_labelled_all_original(electra, monkeypatch, nothing_maskable):
    # Only specials ([CLS] [SEP], or a text that was all [MASK]s): no candidate position. The generator "samples"
    # 2000 everywhere, so any sample written into that row would show.
    ids, types = batch([128, 40])
    ids[1] = PAD
    ids[1, :len(nothing_maskable)] = torch.tensor(nothing_maskable)
    monkeypatch.setattr(electra_module, 'sample_from_softmax',
                        lambda logits, *a, **k: torch.full(logits.shape[:-1], 2000, dtype=torch.long))
    for seed in range(5):                                      # the old code wrote [MASK] at position 0 85% of the time
        torch.manual_seed(seed)
        out, gen_input, disc_input = run_step(electra, ids, types)
        assert torch.equal(gen_input[1], ids[1]) and torch.equal(disc_input[1], ids[1])
        assert not out.is_replaced[1].any() and out.masked_weight[1].sum() == 0
        assert out.is_replaced[0].any()                        # the other row is masked as usual


# ---------------------------------------------------------------------------------------------------------------
# 5-6. Losses
# ---------------------------------------------------------------------------------------------------------------
def test_total_loss_is_1_mlm_plus_50_discriminator(electra):
    torch.manual_seed(0)
    out = electra(*batch([128, 90, 40, 12]))
    used = out.masked_weight.bool()
    mlm = F.cross_entropy(out.mlm_logits[used], out.masked_ids[used])            # mean over used slots
    real = out.attention_mask.bool()
    disc = F.binary_cross_entropy_with_logits(out.disc_logits[real], out.is_replaced[real].float())
    torch.testing.assert_close(ElectraLoss()(out), 1 * mlm + 50 * disc)


def hand_output(disc_logits, is_replaced, attention_mask, mlm_logits=None, masked_ids=None, masked_weight=None):
    """An ElectraOutput built by hand (fields by name: only the ones the losses read matter)."""
    B, L = disc_logits.shape
    masked_ids = torch.zeros(B, 1, dtype=torch.long) if masked_ids is None else masked_ids
    values = dict(mlm_logits=torch.zeros(B, 1, 5) if mlm_logits is None else mlm_logits, masked_ids=masked_ids,
                  masked_positions=torch.ones_like(masked_ids), sampled_ids=masked_ids,
                  masked_weight=torch.ones(B, 1) if masked_weight is None else masked_weight,
                  disc_input=torch.ones(B, L, dtype=torch.long), disc_logits=disc_logits, is_replaced=is_replaced,
                  attention_mask=attention_mask)
    return ElectraOutput(**{f.name: values[f.name] for f in dataclasses.fields(ElectraOutput) if f.name in values})


def test_discriminator_loss_averages_over_all_non_pad_tokens_cls_and_sep_included():
    # [CLS] w w [SEP] [PAD] [PAD]: the pads carry absurd logits that must not count
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 100.0, -100.0]])
    labels = torch.tensor([[False, True, False, False, True, True]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    bce = lambda x, replaced: math.log1p(math.exp(-x)) if replaced else math.log1p(math.exp(x))
    expected = (bce(2.0, False) + bce(-1.0, True) + bce(0.5, False) + bce(3.0, False)) / 4
    assert discriminator_loss(hand_output(logits, labels, mask)).item() == pytest.approx(expected, rel=1e-6)


def test_mlm_loss_is_mean_cross_entropy_over_used_slots_only():
    mlm_logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [9.0, -9.0, 0.0]]])
    masked_ids = torch.tensor([[0, 2, 1]])
    weight = torch.tensor([[1.0, 1.0, 0.0]])                   # the third slot is unused
    out = hand_output(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 4),
                      mlm_logits, masked_ids, weight)
    ce = lambda logits, k: -torch.log_softmax(torch.tensor(logits), 0)[k].item()
    assert mlm_loss(out).item() == pytest.approx((ce([2.0, 0.0, 0.0], 0) + ce([0.0, 1.0, 0.0], 2)) / 2, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Sharing and gradients
# ---------------------------------------------------------------------------------------------------------------
def test_whole_embedding_block_is_shared(electra):
    gen, disc = electra.generator.electra.embeddings, electra.discriminator.electra.embeddings
    assert gen is disc
    for name in ('word_embeddings', 'position_embeddings', 'token_type_embeddings', 'LayerNorm'):
        for p_gen, p_disc in zip(getattr(gen, name).parameters(), getattr(disc, name).parameters(), strict=True):
            assert p_gen.data_ptr() == p_disc.data_ptr()


def test_generator_softmax_is_tied_to_word_embeddings(electra):
    word = electra.discriminator.electra.embeddings.word_embeddings.weight
    assert electra.generator.generator_lm_head.weight is word
    assert electra.generator.generator_lm_head.weight.data_ptr() == word.data_ptr()


def test_each_network_keeps_its_own_embedding_projection(electra):
    # tiny: embeddings 128 -> generator hidden 32 (projected), discriminator hidden 128 (no projection needed)
    project = electra.generator.electra.embeddings_project
    assert (project.in_features, project.out_features) == (128, 32)
    shared = {p.data_ptr() for p in electra.discriminator.parameters()}
    assert all(p.data_ptr() not in shared for p in project.parameters())


def test_no_gradient_flows_through_the_sample(electra):
    torch.manual_seed(0)
    electra.zero_grad(set_to_none=True)
    out = electra(*batch([128, 90]))
    assert not out.sampled_ids.requires_grad
    discriminator_loss(out).backward()
    generator_only = list(electra.generator.electra.encoder.parameters()) + \
        list(electra.generator.generator_predictions.parameters())
    assert all(p.grad is None or not p.grad.any() for p in generator_only)
    assert electra.discriminator.electra.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0
    electra.zero_grad(set_to_none=True)


def test_mlm_loss_trains_the_generator(electra):
    torch.manual_seed(0)
    electra.zero_grad(set_to_none=True)
    mlm_loss(electra(*batch([128, 90]))).backward()
    assert electra.generator.electra.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0
    electra.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------------------
# Sampling from the generator's softmax
# ---------------------------------------------------------------------------------------------------------------
PROBS = torch.tensor([0.0, 0.5, 0.25, 0.15, 0.1])            # token 0 has probability 0, token 1 is the argmax
METHODS = ['gumbel', 'inverse_cdf']


@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_sample_matches_softmax_at_temperature(method, temperature):
    torch.manual_seed(0)
    n = 40_000
    logits = PROBS.log().expand(n, -1)                          # a probability-0 token has logit -inf
    samples = sample_from_softmax(logits, temperature, method)
    counts = torch.bincount(samples, minlength=5)
    assert counts[0] == 0
    expected = PROBS[1:].double() ** (1 / temperature)         # softmax(log p / T) is proportional to p^(1/T)
    expected = expected / expected.sum() * n
    assert chisquare(counts[1:].numpy(), expected.numpy()).pvalue > 1e-4


@pytest.mark.parametrize('V', [7, 256, 1000])
def test_inverse_cdf_across_blocks_matches_the_distribution(V):
    # Blocks of 256 entries: one short block (V=7), exactly one (256), several plus a short last one (1000)
    torch.manual_seed(0)
    logits = torch.randn(V) * 2
    n = 50_000
    counts = torch.bincount(sample_from_softmax(logits.expand(n, V), method='inverse_cdf'), minlength=V).double()
    expected = logits.double().softmax(-1) * n
    common = expected > 20                    # chi-square needs enough expected counts per cell: pool the rare ones
    if not common.all():
        counts = torch.cat([counts[common], counts[~common].sum().view(1)])
        expected = torch.cat([expected[common], expected[~common].sum().view(1)])
    assert chisquare(counts.numpy(), (expected / expected.sum() * n).numpy()).pvalue > 1e-4


@pytest.mark.parametrize('token', [0, 255, 256, 511, 30_000, V - 1])
def test_inverse_cdf_finds_a_single_token_at_any_block_edge(token):
    logits = torch.full((50, V), -math.inf)
    logits[:, token] = 0.0
    assert (sample_from_softmax(logits, method='inverse_cdf') == token).all()


@pytest.mark.parametrize('method', METHODS)
def test_sample_at_low_temperature_is_the_argmax(method):
    torch.manual_seed(0)
    samples = sample_from_softmax(PROBS.log().expand(1000, -1), 0.01, method)
    assert (samples == 1).all()


@pytest.mark.parametrize('method', METHODS)
def test_sample_takes_bf16_logits_and_gives_one_id_per_slot(method):
    torch.manual_seed(0)
    logits = torch.randn(2, 19, V).to(torch.bfloat16)
    samples = sample_from_softmax(logits, 1.0, method)
    assert samples.shape == (2, 19) and samples.dtype == torch.long
    assert ((0 <= samples) & (samples < V)).all()
    assert samples.unique().numel() > 19                         # 38 draws over 30,522 tokens: all but distinct


def test_step_metrics_without_boolean_indexing_match_the_plain_definitions(tokenizer):
    # step_metrics multiplies by masks (no device sync); check it against the obvious boolean-indexed versions
    from _utils.electra import step_metrics
    torch.manual_seed(0)
    electra = build_electra('tiny', tokenizer, max_length=32)
    ids = torch.randint(1000, 2000, (4, 32))
    ids[:, 0], ids[:, 20], ids[:, 21:] = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    out = electra(ids, torch.zeros_like(ids))
    m = step_metrics(out)
    real = out.attention_mask.bool()
    labels, predicted = out.is_replaced[real], out.disc_logits[real] > 0
    assert torch.isclose(m['disc_acc'], (predicted == labels).float().mean())
    assert torch.isclose(m['replaced_rate'], labels.float().mean())
    assert torch.isclose(m['disc_precision'], (predicted & labels).sum() / predicted.sum().clamp_min(1))
    assert torch.isclose(m['disc_recall'], (predicted & labels).sum() / labels.sum().clamp_min(1))
