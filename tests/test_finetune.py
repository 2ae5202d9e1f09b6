"""GLUE finetuning as RECIPE.md states it ("GLUE finetuning", "GLUE test submission"), on tiny models and a few rows."""
import csv
import dataclasses
import io
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from _utils import classifier, finetuning as ft, glue, glue_data, glue_models as models, glue_runs as runs, glue_sets
from _utils.checkpoint import export_huggingface, make_checkpoint
from _utils.electra import share_embeddings
from _utils.errors import UserError
from _utils.files import atomic_save
from _utils.glue import BUNDLED_GLUE_DIR
from _utils.glue_data import encode
from _utils.learner import seed_everything
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining, ElectraModel

PROJECT = Path(__file__).resolve().parents[1]
HUB_FIXTURE = PROJECT / 'tests' / 'fixtures' / 'glue_hf'


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and stay fast on a CPU shared with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS='1', ELECTRA_ARGS='')


@pytest.fixture(scope='module')
def tokenizer():
    from _utils.text import load_tokenizer
    return load_tokenizer('bundled')


def tiny_config(vocab_size, layers=2, **kw):
    return ElectraConfig(vocab_size=vocab_size, embedding_size=8, hidden_size=16, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=512, **kw)


def pretrained_of(electra, tokenizer=None):
    return models.Pretrained(electra, tokenizer, 'tiny-test', 'built in the test')


@pytest.fixture(scope='module')
def tiny_hf_folder(tokenizer, tmp_path_factory):
    """A tiny discriminator body saved the Hugging Face way, with the bundled tokenizer."""
    folder = tmp_path_factory.mktemp('models') / 'tiny-electra'
    torch.manual_seed(0)
    ElectraModel(tiny_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The recipe per size, and layer-wise learning rates on the finetuning model
# ---------------------------------------------------------------------------------------------------------------
def test_size_from_hidden_width_picks_lr_and_layer_decay():
    sizes = {h: models.size_of(types.SimpleNamespace(hidden_size=h)) for h in (128, 256, 768, 1024)}
    assert sizes == {128: 'small', 256: 'small', 768: 'base', 1024: 'large'}
    assert (ft.recipe_for('small').lr, ft.recipe_for('small').layer_lr_decay) == (3e-4, 0.8)
    assert (ft.recipe_for('base').lr, ft.recipe_for('base').layer_lr_decay) == (1e-4, 0.8)
    assert (ft.recipe_for('large').lr, ft.recipe_for('large').layer_lr_decay) == (5e-5, 0.9)
    assert ft.recipe_for('small', lr=None, epochs=5).lr == 3e-4  # None keeps the size's value


def test_recipe_batch_32_warmup_10pct_no_weight_decay_epochs_3_but_10_for_rte_and_stsb():
    r = ft.Recipe()
    assert (r.batch_size, r.warmup_fraction, r.weight_decay, r.clip, r.max_length) == (32, 0.1, 0.0, 1.0, 128)
    assert r.loss_reduction == 'sum'       # the official run_finetuning.py sums the batch's per-example losses
    assert [r.epochs_for(t) for t in ('CoLA', 'RTE', 'STS-B', 'MNLI')] == [3, 10, 10, 3]


@pytest.mark.parametrize('task', ['CoLA', 'STS-B'])
def test_loss_reduction_sum_adds_the_examples_losses_as_the_official_code_and_mean_averages_them(task):
    torch.manual_seed(0)
    if task == 'STS-B': logits, labels = torch.randn(8, 1), torch.rand(8) * 5
    else: logits, labels = torch.randn(8, 2), torch.randint(0, 2, (8,))
    each = torch.stack([classifier.loss_for(task, 'sum')(logits[i:i + 1], labels[i:i + 1]) for i in range(8)])
    torch.testing.assert_close(classifier.loss_for(task, 'sum')(logits, labels), each.sum())
    torch.testing.assert_close(classifier.loss_for(task, 'mean')(logits, labels), each.mean())
    with pytest.raises(UserError, match="unknown loss reduction 'avg'"):
        classifier.loss_for(task, 'avg')


def test_the_learner_trains_on_the_recipes_loss_reduction_and_reports_the_loss_per_example(tokenizer):
    data = few_rows_task('SST-2', tokenizer, train_rows=32)
    losses = {}
    for reduction in ('sum', 'mean'):
        seed_everything(0)
        model = models.build_classifier(pretrained_of(ElectraModel(tiny_config(len(tokenizer)))), 'SST-2')
        recipe = ft.Recipe(lr=1e-3, epochs=1, batch_size=8, loss_reduction=reduction)
        rows = []
        evaluation = ft.DevEvaluation('SST-2', data.dev, rows.append, loss_reduction=reduction)
        learn = ft.finetuning_learner(model, glue_data.glue_dataloader(data.train, batch_size=8, shuffle=False), 'SST-2',
                                      recipe, n_layers=2, epochs=1, extra_cbs=[evaluation])
        assert learn.loss_func.keywords == {'reduction': reduction}
        with learn.no_logging(): learn.fit(1)
        losses[reduction] = rows[-1]['train_loss']
    # The first step is the same for both (same weights and batch); the logged loss is per example either way, so
    # the two runs' epoch losses are of the same size (ln 2 = 0.69 for two classes at the start), not 8x apart
    assert 0.3 < losses['sum'] / losses['mean'] < 3 and 0.3 < losses['mean'] < 1.5


def effective_lrs(model, optimizer):
    lr_of = {id(p): g['lr'] * g['lr_scale'] for g in optimizer.param_groups for p in g['params']}
    return {name: lr_of[id(p)] for name, p in model.named_parameters()}


@pytest.fixture(scope='module')
def twelve_layer_classifier():
    return models.build_classifier(pretrained_of(ElectraModel(tiny_config(100, layers=12))), 'CoLA')


def test_layer_lrs_head_lr_top_layer_lr_times_0_8_squared_embeddings_0_8_to_the_14(twelve_layer_classifier):
    model, lr = twelve_layer_classifier, 3e-4
    lrs = effective_lrs(model, ft.finetuning_optimizer(model, ft.Recipe(lr=lr), n_layers=12))
    assert lrs['classifier.weight'] == pytest.approx(lr)
    assert lrs['classifier.bias'] == pytest.approx(lr)
    assert lrs['electra.encoder.layer.11.attention.self.query.weight'] == pytest.approx(lr * 0.8 ** 2)  # off-by-one
    assert lrs['electra.encoder.layer.0.output.dense.weight'] == pytest.approx(lr * 0.8 ** 13)
    assert lrs['electra.embeddings.word_embeddings.weight'] == pytest.approx(lr * 0.8 ** 14)
    assert lrs['electra.embeddings.LayerNorm.weight'] == pytest.approx(lr * 0.8 ** 14)
    assert lrs['electra.embeddings_project.weight'] == pytest.approx(lr * 0.8 ** 14)


def test_fixed_layer_decay_gives_the_top_layer_lr_times_0_8(twelve_layer_classifier):
    model, lr = twelve_layer_classifier, 3e-4
    lrs = effective_lrs(model, ft.finetuning_optimizer(model, ft.Recipe(lr=lr, fix_layer_decay=True), n_layers=12))
    assert lrs['classifier.weight'] == pytest.approx(lr)
    assert lrs['electra.encoder.layer.11.output.dense.weight'] == pytest.approx(lr * 0.8)
    assert lrs['electra.embeddings.word_embeddings.weight'] == pytest.approx(lr * 0.8 ** 13)


def test_the_learning_rate_goes_from_the_config_to_each_runs_optimizer_by_one_path(twelve_layer_classifier, tmp_path):
    """MyConfig's --lr / --lrs -> `recipes_for` (one Recipe per rate) -> `plan_rates` (a plan holds its recipe, whose
    lr is the plan's) -> the run's optimizer and schedule read `recipe.lr`."""
    one = ft.recipes_for('base', [], lr=None, epochs=2)
    assert [(r.lr, r.epochs, r.layer_lr_decay) for r in one] == [(1e-4, 2, 0.8)]  # the size's lr
    assert [r.lr for r in ft.recipes_for('small', [], lr=7e-5)] == [7e-5]
    search = ft.recipes_for('small', [2e-5, 5e-5], epochs=3)
    assert [(r.lr, r.epochs) for r in search] == [(2e-5, 3), (5e-5, 3)]
    pretrained = pretrained_of(ElectraModel(tiny_config(100, layers=12)))
    plans = glue_sets.plan_rates(search, tmp_path / 'logs', tmp_path / 'models', pretrained, 'bundled', 0.1)
    assert [(p.lr, p.recipe.lr, p.log_dir.name, p.settings['lr']) for p in plans] == [
        (2e-5, 2e-5, 'lr-2e-05', 2e-5), (5e-5, 5e-5, 'lr-5e-05', 5e-5)]
    assert glue_sets.plan_rates(one, tmp_path / 'logs', tmp_path / 'models', pretrained, 'bundled', 0.1)[0].log_dir == \
        tmp_path / 'logs'  # one rate: the group's own folder
    opt = ft.finetuning_optimizer(twelve_layer_classifier, plans[1].recipe, n_layers=12)
    assert effective_lrs(twelve_layer_classifier, opt)['classifier.weight'] == pytest.approx(5e-5)


def test_finetuning_optimizer_is_adam_without_bias_correction_and_no_weight_decay(twelve_layer_classifier):
    from _utils.optim import AdamNoBiasCorrection
    opt = ft.finetuning_optimizer(twelve_layer_classifier, ft.Recipe(), n_layers=12)
    assert isinstance(opt, AdamNoBiasCorrection)
    assert all(g['weight_decay'] == 0.0 and g['eps'] == 1e-6 and g['betas'] == (0.9, 0.999)
               for g in opt.param_groups)


def test_learner_warms_up_10pct_and_decays_to_zero_over_all_epochs(tokenizer):
    model = models.build_classifier(pretrained_of(ElectraModel(tiny_config(len(tokenizer)))), 'SST-2')
    data = few_rows_task('SST-2', tokenizer, train_rows=64)
    train_dl = glue_data.glue_dataloader(data.train, batch_size=8)
    learn = ft.finetuning_learner(model, train_dl, 'SST-2', ft.Recipe(lr=1e-3), n_layers=2, epochs=5)
    assert learn.total_steps == 40
    warmup = next(cb for cb in learn.cbs if type(cb).__name__ == 'WarmupLinearDecay')
    assert (warmup.total_steps, warmup.warmup_steps, warmup.lr) == (40, 4, 1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Which model
# ---------------------------------------------------------------------------------------------------------------
def test_checkpoint_file_and_its_huggingface_export_give_the_same_predictions(tokenizer, tmp_path):
    torch.manual_seed(0)
    disc = ElectraForPreTraining(tiny_config(len(tokenizer)))
    gen = ElectraForMaskedLM(tiny_config(len(tokenizer)))
    share_embeddings(gen, disc)
    ckpt = make_checkpoint(types.SimpleNamespace(generator=gen, discriminator=disc), tokenizer, {}, 7, 10,
                           with_rng=False)
    path = atomic_save(ckpt, tmp_path / 'pretrain' / 'tiny_seed0_100pct.pth')
    export_huggingface(ckpt, tmp_path / 'hf')

    from_checkpoint = models.load_pretrained(str(path))
    from_folder = models.load_pretrained(str(tmp_path / 'hf' / 'discriminator'))
    latest = models.load_pretrained('latest', checkpoint_dir=tmp_path / 'pretrain')
    assert latest.name == from_checkpoint.name == 'tiny_seed0_100pct'

    rows = glue_data.glue_source('bundled').load('MRPC')['dev'].select(range(6))
    encoded = encode(rows, from_folder.tokenizer)
    assert encoded['input_ids'] == encode(rows, from_checkpoint.tokenizer)['input_ids']
    logits = []
    for pretrained in (from_checkpoint, from_folder):
        seed_everything(0)  # same head initialisation
        logits.append(ft.predict_logits(models.build_classifier(pretrained, 'MRPC'), encoded))
    torch.testing.assert_close(logits[0], logits[1])


def test_model_errors_are_one_line_user_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match='no checkpoint'):
        models.load_pretrained('latest', checkpoint_dir=tmp_path)
    with pytest.raises(UserError, match='does not exist'):
        models.load_pretrained(str(tmp_path / 'missing.pth'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='config.json'):
        models.load_pretrained(str(tmp_path / 'empty'))

    def offline(name):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files\nand more")
    monkeypatch.setattr(models, '_electra_body', offline)
    with pytest.raises(UserError, match=r'hub.*--model latest.*save_pretrained.*random') as e:
        models.load_pretrained('google/electra-small-discriminator')
    assert '\n' not in str(e.value)


def test_random_model_has_the_size_and_the_bundled_tokenizer():
    pretrained = models.load_pretrained('random', size='tiny')
    assert pretrained.electra.config.hidden_size == 128 and pretrained.size == 'small'
    assert len(pretrained.tokenizer) == 30522


# ---------------------------------------------------------------------------------------------------------------
# Which data
# ---------------------------------------------------------------------------------------------------------------
def test_tasks_all_means_every_trainable_task_and_names_are_checked():
    assert glue_data.parse_tasks('all') == ['CoLA', 'SST-2', 'MRPC', 'STS-B', 'QQP', 'MNLI', 'QNLI', 'RTE', 'WNLI']
    assert glue_data.parse_tasks('rte,cola,sst2') == ['CoLA', 'SST-2', 'RTE']
    with pytest.raises(UserError, match="did you mean 'cola'"):
        glue_data.parse_tasks('colaa')
    with pytest.raises(UserError, match='MNLI model predicts it'):
        glue_data.parse_tasks('ax')


def test_glue_dir_bundled_hub_parquet_or_an_error(tmp_path):
    assert glue_data.glue_source('bundled').path == BUNDLED_GLUE_DIR
    assert glue_data.glue_source('hub').kind == 'hub'
    assert glue_data.glue_source(str(HUB_FIXTURE)).kind == 'parquet'
    with pytest.raises(UserError, match='is not a folder'):
        glue_data.glue_source(str(tmp_path / 'nope'))
    with pytest.raises(UserError, match='no GLUE task folder'):
        glue_data.glue_source(str(tmp_path))


def test_missing_tasks_are_skipped_and_missing_dev_split_off_train(tokenizer):
    notices = []
    data, skipped = glue_data.load_tasks(['MNLI', 'QNLI', 'RTE', 'MRPC'], glue_data.glue_source('bundled'), tokenizer,
                                  notify=notices.append)
    assert list(data) == ['RTE', 'MRPC'] and set(skipped) == {'MNLI', 'QNLI'}
    assert all('\n' not in n for n in notices) and len(notices) == 3  # MNLI, QNLI skipped; RTE's dev
    assert (len(data['RTE'].train), len(data['RTE'].dev['dev'])) == (270, 30)  # 10% of the 300 sample rows
    assert len(data['MRPC'].train) == 2 * 300  # doubled with swapped sentences
    with pytest.raises(UserError, match='no task can be finetuned'):
        glue_data.load_tasks(['QNLI'], glue_data.glue_source('bundled'), tokenizer, notify=notices.append)


# ---------------------------------------------------------------------------------------------------------------
# Runs, per-epoch metrics on disk, summary
# ---------------------------------------------------------------------------------------------------------------
def few_rows_task(name, tokenizer, train_rows=32, dev_rows=16):
    data, _ = glue_data.load_tasks([name], glue_data.glue_source('bundled'), tokenizer, notify=lambda m: None)
    d = data[name]
    d.train = d.train.select(range(train_rows))
    d.dev = {s: ds.select(range(min(dev_rows, len(ds)))) for s, ds in d.dev.items()}
    return d


def test_each_epochs_dev_metrics_are_on_disk_as_soon_as_the_epoch_ends(tokenizer, tmp_path):
    torch.manual_seed(0)
    pretrained = pretrained_of(ElectraModel(tiny_config(len(tokenizer))), tokenizer)
    runs_log = runs.RunsLog(tmp_path / 'runs.csv')
    rows_on_disk = []
    append = runs_log.append

    def append_then_read(*args):
        append(*args)
        rows_on_disk.append(len(pd.read_csv(runs_log.path)))
    runs_log.append = append_then_read

    result = runs.finetune_task(few_rows_task('CoLA', tokenizer), pretrained, ft.Recipe(epochs=2, batch_size=8),
                              seeds=[3, 4], runs_log=runs_log, log_root=tmp_path / 'logs', loggers=['csv'],
                              log_every=1, verbose=False)
    assert rows_on_disk == [1, 2, 3, 4]
    rows = pd.read_csv(runs_log.path)
    assert list(rows.seed) == [3, 3, 4, 4] and list(rows.epoch) == [1, 2, 1, 2] and list(rows.step) == [4, 8, 4, 8]
    assert set(rows.main_metric) == {'mcc'} and rows.mcc.notna().all() and (rows.score == rows.mcc).all()
    assert (tmp_path / 'logs' / 'CoLA_run0_seed3' / 'metrics.csv').is_file()  # the per-run training log
    assert result.best.state_dict is not None and result.best.score == max(r.score for r in result.runs)

    saved_model, _ = models.load_finetuned(models.save_finetuned(result.best, pretrained, tmp_path / 'CoLA.pth'))
    kept_model = models.classifier_from_result(result, pretrained)
    dev = next(iter(few_rows_task('CoLA', tokenizer).dev.values()))
    torch.testing.assert_close(ft.predict_logits(saved_model, dev), ft.predict_logits(kept_model, dev))

    table, average = runs.summarize(rows)
    assert table.loc['CoLA', 'runs'] == 2
    final = rows[rows.epoch == 2].score
    assert table.loc['CoLA', 'median'] == pytest.approx(final.median())
    assert table.loc['CoLA', 'std'] == pytest.approx(final.std())
    assert 'not comparable' in table.loc['GLUE avg', 'other (median)'] and 'CoLA' not in average.missing
    csv_path, md_path = runs.save_summary(table, tmp_path)
    assert pd.read_csv(csv_path).task.tolist() == ['CoLA', 'GLUE avg']
    assert '| CoLA | mcc | 2 |' in md_path.read_text()


def test_two_evaluations_per_epoch_and_the_best_is_the_runs_score_with_its_weights(tokenizer, tmp_path):
    """TUPE's protocol: dev twice per epoch, a run scored by its best evaluation, whose weights are the run's. The
    evaluations within an epoch leave the training as it was: the epochs' ends score as with one per epoch."""
    torch.manual_seed(0)
    pretrained = pretrained_of(ElectraModel(tiny_config(len(tokenizer))), tokenizer)
    data = few_rows_task('STS-B', tokenizer)
    tupe = ft.Recipe(epochs=2, batch_size=8, validations_per_epoch=2, run_score='best')
    runs_log = runs.RunsLog(tmp_path / 'runs.csv')
    result = runs.finetune_task(data, pretrained, tupe, seeds=[3], runs_log=runs_log, verbose=False)
    rows = pd.read_csv(runs_log.path)
    assert list(rows.epoch) == [0.5, 1, 1.5, 2] and list(rows.step) == [2, 4, 6, 8]
    once = runs.finetune_task(data, pretrained, ft.Recipe(epochs=2, batch_size=8), seeds=[3], verbose=False)
    assert [r['score'] for r in once.runs[0].history] == list(rows.score[rows.epoch.isin([1, 2])])

    best = rows.loc[rows.score.idxmax()]
    assert result.best.score == best.score and result.best.chosen['epoch'] == best.epoch
    assert runs.summarize(result.runs)[0].loc['STS-B', 'median'] == best.score
    model = models.load_finetuned(models.save_finetuned(result.best, pretrained, tmp_path / 'STS-B.pth'))[0]
    assert ft.evaluate('STS-B', model, data.dev) == pytest.approx(best[['pearson', 'spearman']].to_dict())

    read_back = runs.read_runs(runs_log.path, run_score='best')[0]                 # --resume reads it the same way
    assert [r['epoch'] for r in read_back.history] == [0.5, 1, 1.5, 2] and read_back.score == best.score
    assert runs.read_runs(runs_log.path)[0].score == rows.score.iloc[-1]           # the paper's: the last


def test_the_printed_line_gives_the_runs_evaluation_the_best_with_its_epoch_and_metrics(capsys):
    rows = [dict(epoch=e, train_loss=0.5, spearman=s, pearson=p, score=s, seconds=1.0)
            for e, s, p in [(0.5, 22.0, 20.3), (1, 31.3, 29.8), (1.5, 30.4, 33.0)]]
    for best in (True, False):
        line = runs.EpochLine('STS-B run 1/1 (seed 0), spearman by 1/2 epoch:', 'spearman', best=best)
        for row in rows: line.add(row)
        line.end()
    best_line, last_line = capsys.readouterr().out.splitlines()
    assert best_line.endswith('22.00 31.30 30.40; best 31.30 at epoch 1 (pearson 29.8); train loss 0.5000, 3.0 s')
    assert last_line.endswith('22.00 31.30 30.40 (pearson 33.0); train loss 0.5000, 3.0 s')


def test_a_runs_best_evaluation_is_the_earliest_of_equals_and_never_nan():
    run = lambda *scores, rule='best': ft.RunResult('CoLA', 0, 0, [epoch_row(e + 1, s) for e, s in
                                                                   enumerate(scores)], run_score=rule)
    assert run(5.0, 9.0, 9.0, 2.0).chosen['epoch'] == 2 and run(5.0, 9.0, 9.0, 2.0).score == 9.0
    assert run(float('nan'), 3.0, float('nan')).score == 3.0
    assert run(5.0, 9.0, 2.0, rule='last').score == 2.0


def test_a_failing_logger_never_stops_training(tokenizer, tmp_path, monkeypatch):
    from _utils import loggers

    class Broken:  # e.g. a logging service that goes away mid-run
        def __init__(self, *args): pass
        def log(self, row): raise ConnectionError('service unreachable')
        def close(self): pass
    monkeypatch.setitem(loggers._BACKENDS, 'broken', Broken)
    pretrained = pretrained_of(ElectraModel(tiny_config(len(tokenizer))), tokenizer)
    data = few_rows_task('SST-2', tokenizer, train_rows=16, dev_rows=8)
    with pytest.warns(UserWarning, match='logger broken failed'):
        result = ft.finetune_run(data, pretrained, ft.Recipe(epochs=1, batch_size=8), seed=0,
                                 log_dir=tmp_path / 'run', loggers=['broken', 'csv'])
    assert len(result.history) == 1
    assert 'head_lr' in (tmp_path / 'run' / 'metrics.csv').read_text()


class FixedOutputs(torch.nn.Module):
    """A 'model' whose output for a row is looked up by its first word id (the dev evaluation sorts by length)."""

    def __init__(self, outputs_by_id):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter, so that the evaluation finds a device
        self.outputs_by_id = outputs_by_id

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return torch.tensor([[self.outputs_by_id[int(i)]] for i in input_ids[:, 1]])


def test_stsb_dev_spearman_is_computed_on_the_raw_outputs_not_clipped_ones():
    import datasets
    from scipy.stats import spearmanr

    # Outputs 1.1 and 1.3 (scores 5.5 and 6.5) are in the right order; clipped to 5.0 they would tie
    outputs = {2000: 0.2, 2001: 0.6, 2002: 1.1, 2003: 1.3}
    gold = [1.0, 3.0, 4.0, 5.0]
    dev = datasets.Dataset.from_dict({'input_ids': [[101, i, 102] + [2000] * n for n, i in enumerate(outputs)],
                                      'token_type_ids': [[0] * (3 + n) for n in range(4)], 'label': gold})
    metrics = ft.evaluate('STS-B', FixedOutputs(outputs), {'dev': dev})
    assert metrics['spearman'] == pytest.approx(100.0)
    assert 100 * spearmanr([1.0, 3.0, 5.0, 5.0], gold)[0] < 95              # what clipping would have given


def test_glue_average_row_is_the_mean_of_the_medians_without_wnli():
    rows = [dict(task=t, run=r, seed=r, epoch=1, score=s) for t, scores in
            (('CoLA', (50, 60, 70)), ('RTE', (60, 62, 64)), ('WNLI', (10, 10, 10))) for r, s in enumerate(scores)]
    table, average = runs.summarize(pd.DataFrame(rows))
    assert table.loc['CoLA', 'median'] == 60 and table.loc['RTE', 'median'] == 62
    assert average.score == pytest.approx(61) and table.loc['GLUE avg', 'median'] == pytest.approx(61)


# ---------------------------------------------------------------------------------------------------------------
# The script, end to end: hub-format data, runs, summary, submission
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def script_run(tiny_hf_folder, tmp_path_factory):
    """finetune.py on the hub-format fixture (60 rows a split): CoLA, RTE (dev split off train), MNLI (absent)."""
    cwd = tmp_path_factory.mktemp('run')
    env = dict(SUBPROCESS_ENV, HF_DATASETS_CACHE=str(cwd / 'hf_cache'), HF_HUB_OFFLINE='1')
    cmd = [sys.executable, str(PROJECT / 'finetune.py'), '--model', str(tiny_hf_folder), '--glue_dir',
           str(HUB_FIXTURE), '--tasks', 'cola,rte,mnli', '--n_runs', '2', '--epochs', '2', '--batch_size', '16',
           '--logger', 'csv', '--group_name', 'tiny', '--log_dir', str(cwd / 'logs' / 'finetune'),
           '--checkpoint_dir', str(cwd / 'checkpoints' / 'finetune'), '--output_dir', str(cwd / 'test_outputs')]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc.stdout


@pytest.mark.slow
def test_script_keeps_every_epoch_of_every_run_and_a_summary(script_run):
    cwd, stdout = script_run
    rows = pd.read_csv(cwd / 'logs' / 'finetune' / 'tiny' / 'runs.csv')
    assert sorted(set(rows.task)) == ['CoLA', 'RTE']
    assert rows.groupby('task').size().to_dict() == {'CoLA': 4, 'RTE': 4}  # 2 runs x 2 epochs
    assert sorted(set(rows.seed)) == [0, 1]
    summary = pd.read_csv(cwd / 'logs' / 'finetune' / 'tiny' / 'summary.csv')
    assert summary.task.tolist() == ['CoLA', 'RTE', 'GLUE avg']
    assert (cwd / 'logs' / 'finetune' / 'tiny' / 'summary.md').is_file()
    assert 'MNLI: skipped' in stdout and 'RTE: no dev split' in stdout and 'GLUE avg' in stdout
    assert {p.name for p in (cwd / 'checkpoints' / 'finetune' / 'tiny').iterdir()} == {'CoLA.pth', 'RTE.pth'}


@pytest.mark.slow
def test_script_writes_the_submission_files_it_can_and_lists_the_missing_ones(script_run):
    cwd, stdout = script_run
    out = cwd / 'test_outputs' / 'tiny'
    with zipfile.ZipFile(out / 'glue_submission.zip') as z:
        assert sorted(z.namelist()) == ['CoLA.tsv', 'RTE.tsv', 'WNLI.tsv']
    rte = list(csv.reader((out / 'RTE.tsv').open(), delimiter='\t'))
    assert rte[0] == ['index', 'prediction'] and len(rte) == 1 + 60
    assert {row[1] for row in rte[1:]} <= {'entailment', 'not_entailment'}
    wnli = list(csv.reader((out / 'WNLI.tsv').open(), delimiter='\t'))
    assert {row[1] for row in wnli[1:]} == {'0'}  # majority class
    for stem in ('MNLI-m', 'MNLI-mm', 'AX', 'QQP', 'QNLI', 'SST-2', 'MRPC', 'STS-B'):
        assert f'{stem}.tsv:' in stdout


def test_a_second_set_of_runs_keeps_the_first_runs_csv(tmp_path):
    first = runs.RunsLog(tmp_path / 'runs.csv')
    first.append('CoLA', 0, 0, dict(epoch=1, step=10, train_loss=0.5, score=12.0, mcc=12.0, seconds=1.0))
    runs.RunsLog(tmp_path / 'runs.csv')                            # a new set of runs in the same folder
    kept = [p for p in tmp_path.iterdir() if p.name != 'runs.csv']
    assert len(kept) == 1 and kept[0].name.startswith('runs.') and 'CoLA' in kept[0].read_text()
    assert (tmp_path / 'runs.csv').read_text().count('\n') == 1  # the new file has its header only


# ---------------------------------------------------------------------------------------------------------------
# Failures and --resume: a failing run does not stop the others; finished runs are not redone
# ---------------------------------------------------------------------------------------------------------------
SETTINGS = dict(model='checkpoint /x/demo_seed0_100pct.pth (step 800)', data='bundled', dev_fraction=0.1, lr=3e-4,
                epochs=2)
COLA = types.SimpleNamespace(task=glue.task_by_name('CoLA'))  # all `finetune_task` reads of the data with a fake run


def epoch_row(epoch, score):
    return dict(epoch=epoch, step=10 * epoch, train_loss=0.5, mcc=score, score=score, seconds=1.0)


def fake_finetune_run(scores, failing=()):
    """Stands in for `finetune_run`: one epoch whose dev score is `scores[seed]`; the seeds in `failing` raise."""
    def finetune_run(data, pretrained, recipe, seed, run=0, precision='fp32', device=None, log_dir=None, loggers=(),
                     log_every=50, on_epoch=None, config=None):
        if seed in failing: raise RuntimeError('CUDA out of memory\n(more details)')
        row = epoch_row(1, scores[seed])
        on_epoch(row)
        return ft.RunResult(data.task.name, run, seed, [row], {'w': torch.tensor([float(seed)])})
    return finetune_run


def test_resume_counts_the_runs_whose_last_epoch_is_in_runs_csv_and_appends(tmp_path):
    log = runs.RunsLog(tmp_path / 'runs.csv', settings=SETTINGS)
    for epoch in (1, 2): log.append('CoLA', 0, 0, epoch_row(epoch, 10.0 * epoch))
    log.append('CoLA', 1, 1, epoch_row(1, 5.0))                                    # stopped after epoch 1 of 2
    with (tmp_path / 'runs.csv').open('a') as f: f.write('CoLA,2,2,1,10,0.5,mcc,3')  # a row cut short by a kill
    recipe = ft.Recipe(epochs=2)
    finished = runs.finished_runs(tmp_path, SETTINGS, recipe)
    assert list(finished) == ['CoLA'] and list(finished['CoLA']) == [(0, 0)]
    assert [row['score'] for row in finished['CoLA'][(0, 0)].history] == [10.0, 20.0]

    before = (tmp_path / 'runs.csv').read_bytes()
    resumed = runs.RunsLog(tmp_path / 'runs.csv', append=True, settings=SETTINGS)   # run 1 redone
    for epoch in (1, 2): resumed.append('CoLA', 1, 1, epoch_row(epoch, 6.0 + epoch))
    assert (tmp_path / 'runs.csv').read_bytes().startswith(before)               # appended, nothing rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ['runs.csv', 'settings.json']  # nothing moved aside
    finished = runs.finished_runs(tmp_path, SETTINGS, recipe)
    assert sorted(finished['CoLA']) == [(0, 0), (1, 1)]
    assert [row['score'] for row in finished['CoLA'][(1, 1)].history] == [7.0, 8.0]  # the redone epochs


def test_resume_refuses_runs_made_with_other_settings_in_one_line(tmp_path):
    runs.RunsLog(tmp_path / 'runs.csv', settings=SETTINGS).append('CoLA', 0, 0, epoch_row(1, 10.0))
    with pytest.raises(UserError, match=r'made with other settings \(lr 0.0003 -> 0.001; epochs 2 -> 3\); drop '
                                        r'--resume .* or give a new --group_name') as e:
        runs.finished_runs(tmp_path, dict(SETTINGS, lr=1e-3, epochs=3), ft.Recipe(epochs=3))
    assert '\n' not in str(e.value)


def test_resume_reads_settings_written_before_evaluations_per_epoch_as_one_per_epoch_scored_last(tmp_path):
    runs.RunsLog(tmp_path / 'runs.csv', settings=SETTINGS).append('CoLA', 0, 0, epoch_row(2, 10.0))
    now = dict(SETTINGS, validations_per_epoch=1, run_score='last')
    assert list(runs.finished_runs(tmp_path, now, ft.Recipe(epochs=2))['CoLA']) == [(0, 0)]
    with pytest.raises(UserError, match="run_score 'last' -> 'best'"):
        runs.finished_runs(tmp_path, dict(now, run_score='best'), ft.Recipe(epochs=2, run_score='best'))


def test_resume_reads_settings_written_before_fixed_off_by_one_was_renamed_fix_layer_decay(tmp_path):
    runs.RunsLog(tmp_path / 'runs.csv', settings=dict(SETTINGS, fixed_off_by_one=False)).append(
        'CoLA', 0, 0, epoch_row(2, 10.0))
    finished = runs.finished_runs(tmp_path, dict(SETTINGS, fix_layer_decay=False), ft.Recipe(epochs=2))
    assert list(finished['CoLA']) == [(0, 0)]
    with pytest.raises(UserError, match='fix_layer_decay False -> True'):
        runs.finished_runs(tmp_path, dict(SETTINGS, fix_layer_decay=True), ft.Recipe(epochs=2))


def test_a_failing_run_is_reported_in_one_line_and_the_other_runs_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, 'finetune_run', fake_finetune_run({0: 10.0, 1: 30.0, 2: 20.0}, failing={1}))
    log, notices, saved = runs.RunsLog(tmp_path / 'runs.csv'), [], []
    result = runs.finetune_task(COLA, None, ft.Recipe(epochs=1), seeds=[0, 1, 2], runs_log=log, log_root=tmp_path,
                              verbose=False, on_best=saved.append, notify=notices.append)
    assert [r.seed for r in result.runs] == [0, 2] and result.best.seed == 2
    assert len(result.failed) == 1 and notices == [result.failed[0] + '; the other runs go on']
    assert result.failed[0].startswith('CoLA run 2/3 (seed 1) failed: RuntimeError: CUDA out of memory (traceback in ')
    assert 'Traceback' in (tmp_path / 'CoLA_run1_seed1' / 'error.txt').read_text()
    assert [(row['run'], row['seed']) for row in log.rows] == [(0, 0), (2, 2)]
    assert [r.seed for r in saved] == [0, 2]  # each new best saved as soon as its run ends


def test_a_search_finetunes_every_rate_and_each_task_takes_the_rate_with_the_best_median(tmp_path, monkeypatch,
                                                                                           capsys):
    scores = {1e-4: {0: 10.0, 1: 20.0}, 3e-4: {0: 30.0, 1: 5.0}}  # medians 15 and 17.5

    def finetune_run(data, pretrained, recipe, seed, run, precision, device, log_dir, loggers, log_every, on_epoch,
                     config):
        on_epoch(epoch_row(1, scores[recipe.lr][seed]))
        return ft.RunResult(data.task.name, run, seed, [epoch_row(1, scores[recipe.lr][seed])], {})
    monkeypatch.setattr(runs, 'finetune_run', finetune_run)
    plans = glue_sets.plan_rates(ft.recipes_for('small', [1e-4, 3e-4], epochs=1), tmp_path, tmp_path / 'models',
                                 types.SimpleNamespace(source='a model'), 'bundled', 0.1)
    by_rate = glue_sets.finetune_plans(plans, {'CoLA': COLA}, None, [0, 1], save_models=False, loggers=())
    assert {lr: [r.score for r in res['CoLA'].runs] for lr, res in by_rate.items()} == {1e-4: [10.0, 20.0],
                                                                                       3e-4: [30.0, 5.0]}
    assert [len((tmp_path / f'lr-{lr:g}' / 'runs.csv').read_text().splitlines()) for lr in (1e-4, 3e-4)] == [3, 3]
    results, table = glue_sets.best_rate_results(plans, by_rate, 2, 'a search', tmp_path)
    assert results['CoLA'] is by_rate[3e-4]['CoLA'] and table.loc['CoLA', 'median'] == 17.5
    assert (tmp_path / 'search.csv').is_file() and (tmp_path / 'lr-0.0001' / 'summary.csv').is_file()
    out = capsys.readouterr().out
    assert 'CoLA run 2/2 (seed 1), mcc by epoch: 5.00; train loss 0.5000, 1.0 s\n' in out  # one line per run
    with pytest.raises(SystemExit, match=r'^1 run failed \(listed above\)'): glue_sets.stop_if_failed(['a line'])
    glue_sets.stop_if_failed([])


def test_resumed_runs_are_skipped_and_the_saved_best_of_earlier_runs_still_predicts(tokenizer, tmp_path,
                                                                                    monkeypatch):
    pretrained = pretrained_of(ElectraModel(tiny_config(len(tokenizer))), tokenizer)
    weights = models.build_classifier(pretrained, 'CoLA').state_dict()
    earlier = {(0, 0): ft.RunResult('CoLA', 0, 0, [epoch_row(1, 50.0)]),
               (1, 1): ft.RunResult('CoLA', 1, 1, [epoch_row(1, 40.0)])}
    path = models.save_finetuned(dataclasses.replace(earlier[(0, 0)], state_dict=weights), pretrained,
                             tmp_path / 'CoLA.pth')
    best = runs.saved_best(path, earlier)
    assert (best.run, best.seed) == (0, 0) and all(torch.equal(best.state_dict[k], weights[k]) for k in weights)
    assert runs.saved_best(path, {(1, 1): earlier[(1, 1)]}) is None  # the file holds another run's weights

    monkeypatch.setattr(runs, 'finetune_run', fake_finetune_run({0: 50.0, 2: 45.0, 3: 60.0}))
    saved, notices = [], []
    result = runs.finetune_task(COLA, pretrained, ft.Recipe(epochs=1), seeds=[0, 1, 2], verbose=False,
                              finished=earlier, best=best, on_best=saved.append, notify=notices.append)
    assert notices == ['CoLA: run 1, 2 of 3 already finished (in runs.csv): skipped']
    assert [r.seed for r in result.runs] == [0, 1, 2] and result.best is best and saved == []  # 45 < 50
    result = runs.finetune_task(COLA, pretrained, ft.Recipe(epochs=1), seeds=[0, 1, 2, 3], verbose=False,
                              finished=earlier, best=best, on_best=saved.append, notify=notices.append)
    assert result.best.seed == 3 and [r.seed for r in saved] == [3]  # 60 beats the earlier best
    result = runs.finetune_task(COLA, pretrained, ft.Recipe(epochs=1), seeds=[0, 1], verbose=False,
                              finished=earlier, best=None, notify=notices.append)  # no weights were saved
    assert result.best.seed == 0 and result.best.state_dict is not None and [r.seed for r in result.runs] == [0, 1]
    assert notices[-1] == ('CoLA: the best dev run (run 1, seed 0) has no saved weights (stopped while saving them, '
                           'or --save_models false): trained again for the test predictions')


def test_a_finetuned_file_loads_with_weights_only_and_a_truncated_one_is_one_line(tokenizer, tmp_path):
    pretrained = pretrained_of(ElectraModel(tiny_config(len(tokenizer))), tokenizer)
    run = ft.RunResult('RTE', 0, 0, [epoch_row(1, 50.0)], models.build_classifier(pretrained, 'RTE').state_dict())
    path = models.save_finetuned(run, pretrained, tmp_path / 'RTE.pth')
    saved = torch.load(path, weights_only=True)  # plain values and tensors: no pickled code
    assert (saved['task'], saved['run'], saved['seed'], saved['dev']['score']) == ('RTE', 0, 0, 50.0)
    model, _ = models.load_finetuned(path)
    assert model.classifier.out_features == 2
    (tmp_path / 'cut.pth').write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match='truncated') as e:
        models.load_finetuned(tmp_path / 'cut.pth')
    assert '\n' not in str(e.value)


# The script: CoLA's second run fails (as an out of memory would), then the same command with --resume
FAILING_RUN = """
import runpy, sys
import _utils.glue_runs as runs
real = runs.finetune_run
def finetune_run(data, pretrained, recipe, seed, *args):
    if (data.task.name, seed) == ('CoLA', 1): raise RuntimeError('simulated out of memory')
    return real(data, pretrained, recipe, seed, *args)
runs.finetune_run = finetune_run
sys.argv = ['finetune.py', *sys.argv[1:]]
runpy.run_path('finetune.py', run_name='__main__')
"""


@pytest.fixture(scope='module')
def failed_then_resumed(tiny_hf_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp('resume')
    args = ['--model', str(tiny_hf_folder), '--tasks', 'cola,rte', '--n_runs', '2', '--epochs', '1', '--logger', 'csv',
            '--group_name', 'g', '--log_dir', str(out / 'logs'), '--checkpoint_dir', str(out / 'ckpt'),
            '--output_dir', str(out / 'out')]
    run = lambda *cmd: subprocess.run([sys.executable, *cmd], cwd=PROJECT, env=SUBPROCESS_ENV, capture_output=True,
                                      text=True, timeout=300)
    first = run('-c', FAILING_RUN, *args)
    before = dict(runs_csv=(out / 'logs' / 'g' / 'runs.csv').read_bytes(),
                  rte_model=(out / 'ckpt' / 'g' / 'RTE.pth').stat().st_mtime_ns,
                  rte_tsv=(out / 'out' / 'g' / 'RTE.tsv').read_bytes(),
                  submitted=zipfile.ZipFile(out / 'out' / 'g' / 'glue_submission.zip').namelist())
    second = run('finetune.py', *args, '--resume')
    return out / 'logs' / 'g', out, first, before, second


@pytest.mark.slow
def test_script_a_failing_run_is_reported_the_other_runs_and_tasks_go_on_and_the_exit_status_says_so(
        failed_then_resumed):
    _, _, first, before, _ = failed_then_resumed
    assert first.returncode == 1 and 'Traceback' not in first.stderr
    assert 'CoLA run 2/2 (seed 1) failed: RuntimeError: simulated out of memory' in first.stdout
    assert first.stderr.strip().splitlines()[-1] == (
        '1 run failed (listed above); the others\' results are saved: run the same command with --resume to train '
        'only the missing runs')
    rows = pd.read_csv(io.BytesIO(before['runs_csv']))
    assert sorted(zip(rows.task, rows.seed)) == [('CoLA', 0), ('RTE', 0), ('RTE', 1)]
    assert sorted(before['submitted']) == ['CoLA.tsv', 'RTE.tsv', 'WNLI.tsv']


@pytest.mark.slow
def test_script_resume_trains_only_the_missing_runs_and_predicts_with_the_saved_best(failed_then_resumed):
    log_dir, out, _, before, second = failed_then_resumed
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'CoLA: run 1 of 2 already finished (in runs.csv): skipped' in second.stdout
    assert 'RTE: run 1, 2 of 2 already finished (in runs.csv): skipped' in second.stdout
    assert 'CoLA run 2/2 (seed 1), mcc by epoch:' in second.stdout and 'RTE run' not in second.stdout
    assert (log_dir / 'runs.csv').read_bytes().startswith(before['runs_csv'])  # appended, never rewritten
    assert not list(log_dir.glob('runs.*.csv'))                                 # nor moved aside
    rows = pd.read_csv(log_dir / 'runs.csv')
    assert sorted(zip(rows.task, rows.seed)) == [('CoLA', 0), ('CoLA', 1), ('RTE', 0), ('RTE', 1)]
    summary = pd.read_csv(log_dir / 'summary.csv', index_col='task')
    assert (summary.loc['CoLA', 'runs'], summary.loc['RTE', 'runs']) == (2, 2)  # earlier runs and new ones
    # No RTE run was trained: its best, an earlier run, predicts the test set from the weights saved back then
    assert (out / 'ckpt' / 'g' / 'RTE.pth').stat().st_mtime_ns == before['rte_model']
    with zipfile.ZipFile(out / 'out' / 'g' / 'glue_submission.zip') as z:
        assert sorted(z.namelist()) == ['CoLA.tsv', 'RTE.tsv', 'WNLI.tsv']
        assert z.read('RTE.tsv') == before['rte_tsv']


# Ctrl-C during CoLA's second run (simulated: KeyboardInterrupt is what Python raises on SIGINT)
INTERRUPTED_RUN = FAILING_RUN.replace("raise RuntimeError('simulated out of memory')", 'raise KeyboardInterrupt')


@pytest.mark.slow
def test_script_ctrl_c_stops_with_one_line_on_how_to_resume_and_keeps_the_finished_runs(tiny_hf_folder, tmp_path):
    args = ['--model', str(tiny_hf_folder), '--tasks', 'cola,rte', '--n_runs', '2', '--epochs', '1', '--logger', 'csv',
            '--group_name', 'g', '--log_dir', str(tmp_path / 'logs'), '--checkpoint_dir', str(tmp_path / 'ckpt'),
            '--output_dir', str(tmp_path / 'out')]
    proc = subprocess.run([sys.executable, '-c', INTERRUPTED_RUN, *args], cwd=PROJECT, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"interrupted during CoLA: the finished runs are in {tmp_path / 'logs' / 'g' / 'runs.csv'}; run the same "
        'command with --resume to train only the missing runs')
    rows = pd.read_csv(tmp_path / 'logs' / 'g' / 'runs.csv')
    assert sorted(zip(rows.task, rows.seed)) == [('CoLA', 0)]      # the first run, finished before the Ctrl-C
    assert (tmp_path / 'ckpt' / 'g' / 'CoLA.pth').is_file()           # and its weights, the best so far
    assert not (tmp_path / 'out' / 'g').exists() or not list((tmp_path / 'out' / 'g').glob('*.zip'))
