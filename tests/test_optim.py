"""Optimizer and schedule, as RECIPE.md states them ("Optimizer and schedule", "GLUE finetuning": layer-wise decay)."""
import pytest
import torch
import torch.nn as nn
from transformers import ElectraConfig, ElectraModel

from _utils.optim import AdamNoBiasCorrection, linear_warmup_decay, make_optimizer, parameter_groups


# ---------------------------------------------------------------------------------------------------------------
# Adam without bias correction
# ---------------------------------------------------------------------------------------------------------------
IMPLS = ['fused', 'foreach', 'loop']


def one_step(p0, g, lr, weight_decay, impl, lr_scale=1.0):
    p = nn.Parameter(p0.clone())
    opt = AdamNoBiasCorrection([dict(params=[p], lr_scale=lr_scale)], lr=lr, betas=(0.9, 0.999), eps=1e-6,
                               weight_decay=weight_decay, impl=impl)
    p.grad = g.clone()
    opt.step()
    return p.detach()


@pytest.mark.parametrize('impl', IMPLS)
def test_one_adam_step_has_no_bias_correction(impl):
    p0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    g = torch.tensor([0.1, -0.3, 2.0, 1e-4], dtype=torch.float64)
    lr, wd = 1e-3, 0.01
    m = (1 - 0.9) * g                                  # no division by (1 - 0.9^1)
    v = (1 - 0.999) * g ** 2                           # no division by (1 - 0.999^1)
    expected = p0 - lr * (m / (v.sqrt() + 1e-6) + wd * p0)
    torch.testing.assert_close(one_step(p0, g, lr, wd, impl), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize('impl', IMPLS)
def test_two_adam_steps_follow_the_moving_averages(impl):
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = AdamNoBiasCorrection([p], lr=0.1, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, impl=impl)
    g1, g2 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([-0.2, 0.4], dtype=torch.float64)
    expected, m, v = p.detach().clone(), 0, 0
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
        expected = expected - 0.1 * m / (v.sqrt() + 1e-6)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize('impl', IMPLS)
def test_with_bias_correction_three_steps_are_torchs_adamw(impl):
    """TUPE's finetuning optimizer (fairseq's Adam: bias-corrected, weight decay decoupled) is torch's AdamW."""
    torch.manual_seed(0)
    p0, grads = torch.randn(4, 3, dtype=torch.float64), [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)]
    ours, theirs = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    opt = AdamNoBiasCorrection([ours], lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, impl=impl,
                               bias_correction=True)
    ref = torch.optim.AdamW([theirs], lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    for g in grads:
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('impl', ['fused', 'foreach'])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_fast_implementations_agree_with_the_loop(impl, dtype):
    p0, g = torch.randn(3, 5, dtype=dtype), torch.randn(3, 5, dtype=dtype)
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(one_step(p0, g, 1e-2, 0.01, impl), one_step(p0, g, 1e-2, 0.01, 'loop'), **tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_fused_cuda_agrees_with_the_loop():
    torch.manual_seed(0)
    p0, g = torch.randn(300, 70), torch.randn(300, 70)
    fused = one_step(p0.cuda(), g.cuda(), 1e-2, 0.01, 'fused').cpu()
    torch.testing.assert_close(fused, one_step(p0, g, 1e-2, 0.01, 'loop'), rtol=1e-5, atol=1e-6)


def test_group_lr_scale_multiplies_the_step():
    p0, g = torch.ones(3, dtype=torch.float64), torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    full, half = one_step(p0, g, 1e-2, 0.0, 'fused'), one_step(p0, g, 1e-2, 0.0, 'fused', lr_scale=0.5)
    torch.testing.assert_close(p0 - half, (p0 - full) * 0.5, rtol=1e-12, atol=1e-15)


def test_default_hyperparameters_betas_0_9_0_999_eps_1e_6():
    opt = make_optimizer(nn.Linear(2, 2), lr=1e-3)
    assert all(g['betas'] == (0.9, 0.999) and g['eps'] == 1e-6 for g in opt.param_groups)


# ---------------------------------------------------------------------------------------------------------------
# Weight decay groups
# ---------------------------------------------------------------------------------------------------------------
class Classifier(nn.Module):
    """An ELECTRA encoder and a linear head, named as the finetuning model names them."""

    def __init__(self, n_layers=12):
        super().__init__()
        self.electra = ElectraModel(ElectraConfig(vocab_size=10, embedding_size=4, hidden_size=8,
                                                  num_hidden_layers=n_layers, num_attention_heads=1,
                                                  intermediate_size=8, max_position_embeddings=8))
        self.classifier = nn.Linear(8, 2)


@pytest.fixture(scope='module')
def classifier():
    return Classifier()


def decay_by_name(groups):
    return {name: g['weight_decay'] for g in groups for name in g['names']}


def test_weight_decay_0_01_except_layernorm_and_bias(classifier):
    decay = decay_by_name(parameter_groups(classifier, weight_decay=0.01))
    assert decay['electra.embeddings.LayerNorm.weight'] == 0.0
    assert decay['electra.encoder.layer.3.output.LayerNorm.weight'] == 0.0
    assert decay['electra.encoder.layer.3.output.LayerNorm.bias'] == 0.0
    assert decay['electra.encoder.layer.3.attention.self.query.bias'] == 0.0
    assert decay['classifier.bias'] == 0.0
    assert decay['electra.embeddings.word_embeddings.weight'] == 0.01
    assert decay['electra.encoder.layer.3.attention.self.query.weight'] == 0.01
    assert decay['classifier.weight'] == 0.01
    assert all(v == 0.0 for k, v in decay.items() if k.endswith('bias') or 'LayerNorm' in k)
    assert all(v == 0.01 for k, v in decay.items() if not (k.endswith('bias') or 'LayerNorm' in k))


@pytest.fixture(scope='module')
def shared_electra():
    """A generator and a discriminator sharing their embeddings, as in pretraining (tiny vocab)."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    from _utils.electra import share_embeddings
    config = dict(vocab_size=20, embedding_size=8, num_hidden_layers=1, intermediate_size=8,
                  max_position_embeddings=8)
    disc = ElectraForPreTraining(ElectraConfig(hidden_size=8, num_attention_heads=1, **config))
    gen = ElectraForMaskedLM(ElectraConfig(hidden_size=4, num_attention_heads=1, **config))
    share_embeddings(gen, disc)
    return nn.ModuleDict(dict(generator=gen, discriminator=disc))


def test_every_parameter_is_in_exactly_one_group_shared_ones_once(shared_electra):
    groups = parameter_groups(shared_electra)
    grouped = [id(p) for g in groups for p in g['params']]
    assert len(grouped) == len(set(grouped)) == len({id(p) for p in shared_electra.parameters()})


# ---------------------------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('step, expected', [
    (0, 0.0),                                         # warmup starts at 0
    (5_000, 0.5 * (1 - 5_000 / 1_000_000)),          # mid-warmup: warmup *multiplies* the decay
    (10_000, 1 - 10_000 / 1_000_000),                # end of warmup: already decayed by 1%
    (500_000, 0.5),                                   # half-way
    (999_999, 1 / 1_000_000),
    (1_000_000, 0.0),                                 # last step
])
def test_lr_is_lr_times_linear_decay_times_warmup_10000_of_1M(step, expected):
    lr = 5e-4
    assert lr * linear_warmup_decay(step, 1_000_000, 10_000) == pytest.approx(lr * expected, rel=1e-12, abs=1e-18)


def test_no_warmup_is_plain_linear_decay():
    assert linear_warmup_decay(0, 100, 0) == 1.0 and linear_warmup_decay(25, 100, 0) == 0.75


# ---------------------------------------------------------------------------------------------------------------
# Layer-wise lr decay (finetuning)
# ---------------------------------------------------------------------------------------------------------------
def scale_by_name(groups):
    return {name: g['lr_scale'] for g in groups for name in g['names']}


def test_layer_lr_decay_0_8_head_1_top_layer_0_8_squared_embeddings_0_8_to_14(classifier):
    scale = scale_by_name(parameter_groups(classifier, 0.01, layer_lr_decay=0.8, n_layers=12))
    assert scale['classifier.weight'] == scale['classifier.bias'] == 1.0
    assert scale['electra.encoder.layer.11.output.dense.weight'] == pytest.approx(0.8 ** 2)   # the official off-by-one
    assert scale['electra.encoder.layer.0.output.dense.weight'] == pytest.approx(0.8 ** 13)
    assert scale['electra.embeddings.word_embeddings.weight'] == pytest.approx(0.8 ** 14)
    assert scale['electra.embeddings.LayerNorm.weight'] == pytest.approx(0.8 ** 14)
    assert scale['electra.embeddings_project.weight'] == pytest.approx(0.8 ** 14)


@pytest.mark.parametrize('i', range(12))
def test_layer_i_gets_decay_to_the_12_plus_2_minus_depth(classifier, i):
    scale = scale_by_name(parameter_groups(classifier, 0.01, layer_lr_decay=0.8, n_layers=12))
    assert all(v == pytest.approx(0.8 ** (12 + 2 - (i + 1)))
               for k, v in scale.items() if k.startswith(f'electra.encoder.layer.{i}.'))


def test_fixed_layer_decay_gives_the_top_layer_0_8(classifier):
    scale = scale_by_name(parameter_groups(classifier, 0.01, layer_lr_decay=0.8, n_layers=12, fix_layer_decay=True))
    assert scale['classifier.weight'] == 1.0
    assert scale['electra.encoder.layer.11.output.dense.weight'] == pytest.approx(0.8)
    assert scale['electra.embeddings.word_embeddings.weight'] == pytest.approx(0.8 ** 13)


def test_without_layer_decay_every_group_has_scale_1(classifier):
    assert all(g['lr_scale'] == 1.0 for g in parameter_groups(classifier, 0.01))
