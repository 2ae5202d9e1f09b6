"""The paper's objectives side by side (section 3.2, Table 5; `--objective`): each one's input, labels and losses on
a fixture batch, and that each checkpoints, resumes, finetunes and exports like the default; and that an objective is
one entry (`_utils/objectives.py`) the code reads."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from _utils.checkpoint import export_huggingface, load_weights, make_checkpoint, models_from_checkpoint
from _utils.electra import (ELECTRA, OBJECTIVES, CopyingMaskedLM, ElectraLoss, copy_mlm_loss, step_metrics,
                            used_positions)
from _utils.errors import UserError
from _utils.glue_models import _from_checkpoint
from _utils.objectives import Objective
from _utils.pretraining import build_electra, last_batch_auc, learning_summary

PAD, CLS, SEP, MASK = 0, 101, 102, 103


def fixture_batch(seed=0):
    """Two rows `[CLS] words [SEP]` of 60 and 30 real tokens, padded to 64."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 29_000, (2, 64), generator=g)
    for row, n in enumerate((60, 30)):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = CLS, SEP, PAD
    return ids, torch.zeros_like(ids)


def model_for(objective, tokenizer, seed=0):
    torch.manual_seed(seed)
    return build_electra('tiny', tokenizer, max_length=64, objective=objective).eval()


def inputs_seen(electra, ids, types):
    """One forward; the input ids the generator and the discriminator (or MLM model) were given."""
    seen = {}
    record = lambda name: lambda m, a, kw: seen.__setitem__(name, kw['input_ids'] if 'input_ids' in kw else a[0])
    hooks = [electra.discriminator.electra.register_forward_pre_hook(record('model'), with_kwargs=True)]
    if electra.generator is not None:
        hooks.append(electra.generator.electra.register_forward_pre_hook(record('generator'), with_kwargs=True))
    try: out = electra(ids, types)
    finally:
        for h in hooks: h.remove()
    return out, seen


def used_mask(out):
    return used_positions(out.masked_positions, out.masked_weight, out.attention_mask.shape).bool()


def test_every_objective_builds_the_right_pair(tokenizer):
    kinds = {o: model_for(o, tokenizer) for o in OBJECTIVES}
    assert isinstance(kinds['electra'].discriminator, ElectraForPreTraining)
    assert isinstance(kinds['electra-15'].discriminator, ElectraForPreTraining)
    assert isinstance(kinds['replace-mlm'].discriminator, ElectraForMaskedLM)
    assert isinstance(kinds['mlm'].discriminator, ElectraForMaskedLM)
    assert isinstance(kinds['all-tokens-mlm'].discriminator, CopyingMaskedLM)  # an ElectraForMaskedLM with a gate
    assert kinds['mlm'].generator is None
    # the MLM model is the discriminator's size, not the generator's
    assert kinds['mlm'].discriminator.config.hidden_size == kinds['electra'].discriminator.config.hidden_size == 128


def test_unknown_objective_is_one_line(tokenizer):
    with pytest.raises(UserError, match="unknown objective 'bert'; objectives: electra, electra-15"):
        build_electra('tiny', tokenizer, objective='bert')


def test_electra_15_counts_the_discriminator_loss_on_masked_positions_only(tokenizer):
    electra = model_for('electra-15', tokenizer)
    torch.manual_seed(1)
    out = electra(*fixture_batch())
    used = used_mask(out)
    assert 0 < used.sum() < out.attention_mask.sum()
    bce = F.binary_cross_entropy_with_logits(out.disc_logits[used].float(), out.is_replaced[used].float())
    torch.testing.assert_close(out.disc_loss, bce)
    # logits at unmasked positions do not move the loss: no gradient reaches them
    logits = out.disc_logits.detach().requires_grad_()
    out.disc_logits = logits
    from _utils.electra import discriminator_loss
    discriminator_loss(out).backward()
    assert logits.grad[~used].abs().max() == 0 and logits.grad[used].abs().min() > 0
    torch.testing.assert_close(ElectraLoss()(out), out.mlm_loss + 50 * bce)


def test_electra_counts_every_real_token(tokenizer):
    electra = model_for('electra', tokenizer)
    torch.manual_seed(1)
    out = electra(*fixture_batch())
    real = out.attention_mask.bool()
    torch.testing.assert_close(out.disc_loss, F.binary_cross_entropy_with_logits(out.disc_logits[real].float(),
                                                                                 out.is_replaced[real].float()))


def test_mlm_has_no_generator_and_no_discriminator_term(tokenizer):
    electra = model_for('mlm', tokenizer)
    torch.manual_seed(1)
    ids, types = fixture_batch()
    out, seen = inputs_seen(electra, ids, types)
    assert out.disc_logits is None and out.disc_loss is None and out.mlm_logits is None and out.sampled_ids is None
    # the model sees [MASK] at the masked positions (85% of the used slots) and nothing else changed
    used = used_mask(out)
    assert (seen['model'][~used] == ids[~used]).all()
    assert (seen['model'][used] == MASK).float().mean() > 0.6
    # its loss is the mean cross-entropy over the used slots, and the total loss is that alone
    w = out.masked_weight.bool()
    ce = F.cross_entropy(out.model_logits[w].float(), out.masked_ids[w])
    torch.testing.assert_close(out.model_loss, ce)
    torch.testing.assert_close(ElectraLoss()(out), ce)
    assert set(step_metrics(out)) == {'model_mlm_loss', 'model_acc'}
    assert last_batch_auc(out) == {}


def test_replace_mlm_input_has_generator_samples_not_mask(tokenizer):
    electra = model_for('replace-mlm', tokenizer)
    torch.manual_seed(1)
    ids, types = fixture_batch()
    out, seen = inputs_seen(electra, ids, types)
    assert (seen['generator'] == MASK).any()                 # the generator still gets [MASK]
    assert not (seen['model'] == MASK).any()                 # the model gets the samples instead
    used, w = used_mask(out), out.masked_weight.bool()
    assert (seen['model'][~used] == ids[~used]).all()
    assert (seen['model'] == out.disc_input).all()
    # a slot whose position no other used slot drew holds that slot's sample (slots are drawn with replacement)
    pos = out.masked_positions
    alone = w & ((pos.unsqueeze(2) == pos.unsqueeze(1)) & w.unsqueeze(1)).sum(2).eq(1)
    assert alone.sum() > 10
    assert (seen['model'].gather(1, pos)[alone] == out.sampled_ids[alone]).all()
    # loss: the generator's MLM + the model's MLM on the original tokens at the masked positions; no discriminator
    ce = F.cross_entropy(out.model_logits[w].float(), out.masked_ids[w])
    torch.testing.assert_close(out.model_loss, ce)
    assert out.disc_logits is None and out.disc_loss is None
    torch.testing.assert_close(ElectraLoss()(out), out.mlm_loss + ce)
    assert {'mlm_loss', 'gen_acc', 'model_mlm_loss', 'model_acc'} <= set(step_metrics(out))


def test_all_tokens_mlm_loss_is_the_papers_copy_mechanism_on_a_fixture_batch():
    """p(x_t) = D [x~_t = x_t] + (1 - D) softmax(x_t) on every real token (the paper, section 3.2), by hand."""
    torch.manual_seed(0)
    original = torch.tensor([[5, 6, 7, 8, 0], [9, 5, 6, 0, 0]])
    read = torch.tensor([[5, 3, 7, 8, 0], [9, 5, 2, 0, 0]])     # two tokens replaced (3 for 6, 2 for 6)
    mask = (original != 0).long()
    logits, gate = torch.randn(2, 5, 10), torch.randn(2, 5)
    terms = []
    for b in range(2):
        for t in range(5):
            if not mask[b, t]: continue
            d, p_mlm = torch.sigmoid(gate[b, t]), logits[b, t].softmax(-1)[original[b, t]]
            copied = d if read[b, t] == original[b, t] else 0.0   # the copy term: only where the token read is right
            terms.append(-torch.log(copied + (1 - d) * p_mlm))
    torch.testing.assert_close(copy_mlm_loss(logits, gate, read, original, mask), torch.stack(terms).mean())
    # a replaced token is explained by the MLM softmax alone: a surer copy gate there only costs
    sure = gate.clone()
    sure[0, 1] += 5
    assert copy_mlm_loss(logits, sure, read, original, mask) > copy_mlm_loss(logits, gate, read, original, mask)
    sure = gate.clone()
    sure[0, 0] += 5                                                # a token read right: a surer gate helps
    assert copy_mlm_loss(logits, sure, read, original, mask) < copy_mlm_loss(logits, gate, read, original, mask)


def test_all_tokens_mlm_reads_samples_and_predicts_every_token(tokenizer):
    electra = model_for('all-tokens-mlm', tokenizer)
    torch.manual_seed(1)
    ids, types = fixture_batch()
    out, seen = inputs_seen(electra, ids, types)
    used = used_mask(out)
    assert (seen['model'][used] != MASK).all() and (seen['model'] == out.disc_input).all()  # samples, never [MASK]
    assert out.copy_logits.shape == ids.shape and out.disc_logits is None
    logits, gate = electra.discriminator.all_token_outputs(out.disc_input, out.attention_mask, types)
    torch.testing.assert_close(out.copy_logits, gate)
    torch.testing.assert_close(out.model_loss, copy_mlm_loss(logits, gate, out.disc_input, ids, out.attention_mask))
    torch.testing.assert_close(ElectraLoss()(out), out.mlm_loss + out.model_loss)
    metrics = step_metrics(out)
    assert {'mlm_loss', 'gen_acc', 'model_mlm_loss', 'model_acc', 'copy_prob'} <= set(metrics)
    assert 0 < metrics['copy_prob'] < 1


def test_a_pair_that_does_not_fit_the_objective_is_refused(tokenizer):
    electra = model_for('electra', tokenizer)
    with pytest.raises(UserError, match='needs a generator'):
        ELECTRA(None, electra.discriminator, MASK, [CLS, SEP, MASK, PAD], objective='electra')


@pytest.mark.parametrize('objective', ['electra-15', 'replace-mlm', 'mlm', 'all-tokens-mlm'])
def test_checkpoint_records_the_objective_and_restores_it(objective, tokenizer, tmp_path):
    electra = model_for(objective, tokenizer)
    ckpt = make_checkpoint(electra, tokenizer, {'objective': objective}, 1, 1, with_rng=False)
    assert ckpt['objective'] == objective
    gen, disc = models_from_checkpoint(ckpt)
    disc.eval()
    assert type(disc) is type(electra.discriminator) and (gen is None) == (objective == 'mlm')
    ids, types = fixture_batch()
    with torch.no_grad():
        torch.testing.assert_close(disc.electra(ids).last_hidden_state,
                                   electra.discriminator.electra(ids).last_hidden_state)
    # resuming as another objective is refused with the fix
    with pytest.raises(UserError, match=f'trained with --objective {objective}.*use --objective {objective}'):
        load_weights(model_for('electra', tokenizer), ckpt)
    # finetuning takes the body; the export writes what the objective trained
    torch.save(ckpt, tmp_path / 'run.pth')
    ckpt['format'] = torch.load(tmp_path / 'run.pth', weights_only=False)['format']
    body = _from_checkpoint(tmp_path / 'run.pth').electra.eval()
    torch.testing.assert_close(body.embeddings.word_embeddings.weight,
                               electra.discriminator.electra.embeddings.word_embeddings.weight)
    export_huggingface(ckpt, tmp_path / 'hf')
    main = 'discriminator' if objective == 'electra-15' else 'mlm'
    assert sorted(p.name for p in (tmp_path / 'hf').iterdir()) == sorted([main] + (['generator'] if gen else []))
    cls = ElectraForPreTraining if main == 'discriminator' else ElectraForMaskedLM
    reloaded = cls.from_pretrained(tmp_path / 'hf' / main).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.electra(ids).last_hidden_state, disc.electra(ids).last_hidden_state)


def test_learning_summary_speaks_plainly():
    row = lambda step, auc: dict(step=step, mlm_loss=10 - step / 100, gen_acc=step / 1000, disc_loss=0.3,
                                 replaced_rate=0.13, disc_auc=auc)
    assert 'not yet learning' in learning_summary([row(1, 0.5), row(100, 0.55)])
    assert 'learning, not there yet' in learning_summary([row(1, 0.5), row(100, 0.7)])
    assert 'learned to spot replaced tokens' in learning_summary([row(1, 0.5), row(100, 0.85)])
    mlm = [dict(step=1, model_mlm_loss=10.0, model_acc=0.0), dict(step=9, model_mlm_loss=7.0, model_acc=0.1)]
    text = learning_summary(mlm)
    assert 'Model MLM loss 10.000 (step 1) -> 7.000 (step 9): 30% lower; accuracy 0.000 -> 0.100' in text
    assert 'Discriminator' not in text
    # the held-out measurement, when there is one, is what the verdict reads
    text = learning_summary([row(1, 0.5), row(100, 0.55)], dict(gen_acc=0.31, disc_auc=0.83), 256)
    assert 'On 256 held-out examples (never trained on): generator accuracy 0.310, discriminator AUC 0.830' in text
    assert 'held-out AUC 0.830: learned to spot replaced tokens' in text


@pytest.mark.slow
def test_held_out_examples_are_the_corpus_end_and_measured_without_side_effects(tokenizer):
    from _utils.pretraining import held_out_metrics, split_held_out
    from _utils.text import pretraining_examples
    examples = pretraining_examples('bundled', tokenizer, 64, verbose=False)
    held, train = split_held_out(examples, 50)
    assert len(held) == 50 and len(train) == len(examples) - 50
    assert torch.equal(held[0]['input_ids'], examples[len(examples) - 50]['input_ids'])
    assert len(split_held_out(examples.select(range(30)), 50)[0]) == 3     # at most a tenth of the corpus
    held_none, all_of_them = split_held_out(examples.select(range(5)), 50)  # a corpus too small: nothing held out
    assert len(held_none) == 0 and len(all_of_them) == 5
    for objective in ('electra', 'mlm'):
        torch.manual_seed(0)
        electra = build_electra('tiny', tokenizer, max_length=64, objective=objective).train()
        state = torch.get_rng_state()
        first = held_out_metrics(electra, held.select(range(20)), batch_size=8)
        assert torch.equal(torch.get_rng_state(), state) and electra.training      # nothing else changes
        assert first == held_out_metrics(electra, held.select(range(20)), batch_size=8)  # fixed masking, sampling
        if objective == 'electra':
            assert 0 <= first['gen_acc'] <= 1 and 0 < first['disc_auc'] < 1
        else:
            assert set(first) == {'model_acc'}


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['mlm', 'all-tokens-mlm'])
def test_pretrain_py_with_mlm_resumes_exactly_and_its_checkpoint_finetunes(objective, tmp_path):
    """The whole path for the objective without a generator and for the one with a copy gate: pretrain.py, an exact
    resume, finetune.py."""
    import csv
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    args = ['--size', 'tiny', '--compile', 'none', '--batch_size', '4', '--max_length', '32', '--precision', 'fp32',
            '--device', 'cpu',
            '--logger', 'csv', '--log_every', '1', '--warmup_steps', '2', '--objective', objective, '--run_name', 'm',
            '--max_steps', '4', '--checkpoint_fractions', '1']

    def run(script, *more, folder):
        res = subprocess.run([sys.executable, script, *more, '--checkpoint_dir', str(folder / 'ckpt'),
                              '--log_dir', str(folder / 'logs')], cwd=root, capture_output=True, text=True,
                             timeout=600, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout

    def losses(folder):
        rows = csv.DictReader((folder / 'logs' / 'm_seed0' / 'metrics.csv').open())
        return {int(r['step']): float(r['model_mlm_loss']) for r in rows}

    full, half = tmp_path / 'full', tmp_path / 'half'
    out = run('pretrain.py', *args, '--save_every', '2', folder=full)
    assert f'objective {objective},' in out and 'Model MLM loss' in out
    assert ('no generator' in out) == (objective == 'mlm')
    (half / 'ckpt').mkdir(parents=True)
    (full / 'ckpt' / 'm_seed0_step2.pth').rename(half / 'ckpt' / 'm_seed0_step2.pth')
    out = run('pretrain.py', '--resume', 'latest', '--run_name', 'm', folder=half)  # the objective comes back too
    assert 'from step 2' in out and f'objective {objective},' in out
    a, b = losses(full), losses(half)
    assert sorted(b) == [3, 4] and all(abs(a[s] - b[s]) <= 1e-6 for s in b)
    out = run('finetune.py', '--model', str(full / 'ckpt' / 'm_seed0_100pct.pth'), '--tasks', 'rte', '--n_runs', '1',
              '--epochs', '1', '--max_length', '32', '--precision', 'fp32', '--device', 'cpu', '--logger', 'csv',
              '--group_name', 'ci', '--output_dir', str(tmp_path / 'out'), folder=tmp_path / 'ft')
    assert 'RTE' in out


def test_each_entry_says_what_its_objective_trains():
    """Table 5's four, one entry each: a generator?, the second model's head, what it reads, where its loss counts."""
    assert {n: (o.generator, o.head, o.reads, o.scored) for n, o in OBJECTIVES.items()} == {
        'electra': (True, 'discriminator', 'samples', 'all'),
        'electra-15': (True, 'discriminator', 'samples', 'masked'),
        'replace-mlm': (True, 'mlm', 'samples', 'masked'),
        'mlm': (False, 'mlm', 'masked', 'masked'),
        'all-tokens-mlm': (True, 'mlm', 'samples', 'all'),
    }
    assert [n for n, o in OBJECTIVES.items() if o.copy] == ['all-tokens-mlm']
    assert [n for n, o in OBJECTIVES.items() if o.detects] == ['electra', 'electra-15']
    assert all(n == o.name and o.summary for n, o in OBJECTIVES.items())


def test_an_entry_the_step_cannot_compute_is_refused():
    with pytest.raises(ValueError, match="objective 'x': the step cannot compute"):
        Objective('x', 'a detector of the masked text', generator=False, head='discriminator', reads='masked',
                  scored='all')


def check_exports(electra, tokenizer, tmp_path, folders):
    """Checkpoint, rebuild, resume and export an objective: the export writes `folders`."""
    name = electra.objective
    ckpt = make_checkpoint(electra, tokenizer, {'objective': name}, 1, 1, with_rng=False)
    assert ckpt['objective'] == name
    gen, disc = models_from_checkpoint(ckpt)
    assert type(disc) is type(electra.discriminator) and type(gen) is type(electra.generator)
    load_weights(model_for(name, tokenizer, seed=1), ckpt)
    export_huggingface(ckpt, tmp_path / 'hf')
    assert sorted(p.name for p in (tmp_path / 'hf').iterdir()) == sorted(folders)
    return ckpt


def test_adding_an_objective_is_one_entry(tokenizer, tmp_path, monkeypatch):
    """A copy of the paper's objective under another name builds, steps, checkpoints, exports and detects like it."""
    monkeypatch.setitem(OBJECTIVES, 'electra-copy', replace(OBJECTIVES['electra'], name='electra-copy'))
    copy, paper = model_for('electra-copy', tokenizer), model_for('electra', tokenizer)
    torch.manual_seed(1)
    out = copy(*fixture_batch())
    torch.manual_seed(1)
    paper_out = paper(*fixture_batch())
    torch.testing.assert_close(ElectraLoss()(out), ElectraLoss()(paper_out))
    assert step_metrics(out).keys() == step_metrics(paper_out).keys()
    ckpt = check_exports(copy, tokenizer, tmp_path, ['discriminator', 'generator'])
    torch.save(ckpt, tmp_path / 'copy.pth')
    from _utils.detection import load_detector
    assert isinstance(load_detector(str(tmp_path / 'copy.pth')).discriminator, ElectraForPreTraining)


def test_a_new_combination_is_computed_from_its_flags(tokenizer, tmp_path, monkeypatch):
    """An entry none of the four is (BERT's masked text, with a generator trained beside it): the flags alone say what
    the step computes."""
    monkeypatch.setitem(OBJECTIVES, 'mlm-with-generator', Objective(
        'mlm-with-generator', 'BERT, a generator trained beside it', generator=True, head='mlm', reads='masked',
        scored='masked'))
    electra = model_for('mlm-with-generator', tokenizer)
    assert isinstance(electra.discriminator, ElectraForMaskedLM) and isinstance(electra.generator, ElectraForMaskedLM)
    torch.manual_seed(1)
    ids, types = fixture_batch()
    out, seen = inputs_seen(electra, ids, types)
    used = used_mask(out)
    assert (seen['model'] == seen['generator']).all() and (seen['model'][used] == MASK).float().mean() > 0.6
    assert out.disc_logits is None and out.is_replaced is None and out.sampled_ids is not None
    torch.testing.assert_close(ElectraLoss()(out), out.mlm_loss + out.model_loss)
    check_exports(electra, tokenizer, tmp_path, ['mlm', 'generator'])
