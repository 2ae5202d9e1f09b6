#!/usr/bin/env python
# Generated from Finetune_GLUE.ipynb by `make scripts`: edit the notebook, not this file.

# # Finetune ELECTRA on GLUE
# 
# The pretrained **discriminator** is what ELECTRA keeps: here its body gets the paper's classification head
# (dropout on the [CLS] vector, one linear layer) and is finetuned on each GLUE task, several times with different
# seeds, because single GLUE runs vary a lot. The paper reports the **median** dev score over runs, and the best
# dev run of each task predicts the test set for the GLUE server.
# 
# This notebook is the source of `finetune.py` (regenerate it with `make scripts`, which runs nbconvert): the
# cells tagged `notebook-only` are pictures and tables that stay here. The numbers of the recipe are in
# `RECIPE.md` ("GLUE finetuning", "GLUE test submission"); the logic lives in `_utils/`: `glue_models.py` (which
# model, and the finetuned-model file), `glue.py` and `glue_data.py` (the data), `finetuning.py` (one run),
# `glue_runs.py` (one task's runs: runs.csv, resume, summaries), `glue_sets.py` (the set: one plan per learning rate,
# the best rate per task) and `glue_scores.py` (metrics, submission).

import time
import warnings
from dataclasses import dataclass

warnings.filterwarnings('ignore', message='.*torch.jit.script.*is deprecated')  # raised inside a dependency

import datasets

from _utils.config import POSITIVE, Config, option, within
from _utils.electra import SIZES, count_parameters
from _utils.errors import ensure_writable
from _utils.files import claim_run, project_path, remove_stale_temps, say
from _utils.finetuning import (by_size, group_name_for, missing_files_report, parse_rates, predict_test,
                               recipes_for, run_seeds)
from _utils.glue_data import glue_source, load_tasks, load_test_only, parse_tasks
from _utils.glue_scores import write_submission
from _utils.learner import pick_device, pick_precision
from _utils.loggers import LOGGERS, parse_loggers
from _utils.glue_models import check_max_length, classifier_from_result, load_pretrained
from _utils.glue_sets import best_rate_results, finetune_plans, plan_rates, stop_if_failed

datasets.disable_progress_bars()  # dozens of small tokenizing passes: their bars would bury the results
started = time.perf_counter()


# ## 1. Configuration
# The fields' defaults are the paper's recipe. A **preset** sets a group of them: `demo` (the default) only lowers the
# number of runs per task from the paper's 10 to 3 (still a median), so that the whole bundled sample finetunes in a few
# minutes on a laptop CPU; `paper` is the paper's protocol (10 runs); `tupe` is TUPE's (RECIPE.md, "TUPE"): a
# learning-rate search over 2, 3, 4 and 5e-5 with 5 runs per rate, the median per rate and the best rate's median per
# task, 10 epochs (5 for MNLI, QNLI and QQP), warmup 6%, one rate for every layer, weight decay 0.01 and Adam with bias
# correction and betas (0.9, 0.98), two dev evaluations per epoch and each run's best as its score. The learning rate
# and the layer-wise decay follow the model's size unless given (`--lrs` gives a search of your own). Any field can be
# overridden from the command line, e.g. `python finetune.py --tasks cola,rte --n_runs 5`; `--help` lists them.

@dataclass
class Runs(Config):
    """Which model finetunes on which tasks, how many times, and where the results go."""
    preset: str = option('demo', "'demo': 3 runs per task (minutes on a CPU); 'paper': 10 runs; 'tupe': TUPE's lr "
                         'search (4 rates x 5 runs, 10 epochs); fields given on the command line win',
                         choices=['demo', 'paper', 'tupe', 'none'])
    model: str = option('latest', "'latest' (newest checkpoint of pretrain.py), a .pth checkpoint, a Hugging Face "
                        "ELECTRA folder or hub id (google/electra-small-discriminator), or 'random'")
    size: str = option('small', "model size for --model random (a loaded model's size comes from its hidden size)",
                       choices=list(SIZES))
    glue_dir: str = option('bundled', "'bundled' (datasets/glue_sample, a few hundred rows per task), a folder in the "
                           "classic download_glue_data.py layout, a folder of the hub's parquet files, or 'hub'")
    tasks: str = option('all', "'all' or a comma list, e.g. cola,sst2,rte (AX comes with MNLI)")
    max_length: int = option(128, 'tokens per example; pairs are truncated from the longer side',
                             valid=within(8, 512))
    dev_fraction: float = option(0.1, 'where a task has no dev split: the fraction of train held out as dev',
                                 valid=within(0, 1, '()'))
    n_runs: int = option(10, 'runs per task, seeds seed, seed+1, ...; the paper reports the median of 10',
                         valid=POSITIVE)
    seed: int = option(0, 'seed of the first run')
    group_name: str = option('', 'folder name of this set of runs; empty: the model\'s name')
    resume: bool = option(False, 'skip the runs that runs.csv of this group shows finished (same model, data and '
                          'recipe, else refused) and train only the missing ones; summary and test predictions use '
                          'all of them')
    save_models: bool = option(True, "keep each task's best run so far in <checkpoint_dir>/<group_name>/<task>.pth, "
                               'updated as each run ends (--resume predicts with it)')
    log_dir: str = option('logs/finetune', 'runs.csv, summaries and training logs go to <log_dir>/<group_name>/ '
                          '(relative paths: from the project folder)')
    checkpoint_dir: str = option('checkpoints/finetune', 'finetuned models go to <checkpoint_dir>/<group_name>/')
    output_dir: str = option('test_outputs', 'the GLUE submission goes to <output_dir>/<group_name>/')
    wnli: str = option('majority', "WNLI test predictions: 'majority' class (the paper) or the finetuned 'model'",
                       choices=['majority', 'model'])
    precision: str = option('auto', 'auto: bf16 where the hardware is fast at it, else fp16 (GPU) / fp32 (CPU)',
                            choices=['auto', 'fp32', 'bf16', 'fp16'])
    device: str = option('auto', 'auto, cpu, cuda or cuda:N')
    logger: str = option('csv,tensorboard', f"per-run training logs: comma-separated among {', '.join(LOGGERS)}, "
                         'or none')
    log_every: int = option(10, 'log the training loss every N steps', valid=POSITIVE)

    @property
    def loggers(self): return parse_loggers(self.logger)


# The recipe: the learning rate and the layer-wise decay follow the model's size unless given, one rate or a search
# over several (`--lrs`); each field's allowed values are checked as the config is built (`valid=`), before any model
# is loaded.

@dataclass
class MyConfig(Runs):
    """Finetune a pretrained ELECTRA discriminator on GLUE, report dev medians, write the test submission."""
    lr: float | None = option(None, f"peak learning rate; none: by size, {by_size('lr')}", valid=POSITIVE)
    lrs: str = option('', 'a learning-rate search: comma list of peak rates, each with n_runs runs; per task the '
                      'rate with the best median is reported (TUPE\'s protocol); empty: one rate, --lr')
    layer_lr_decay: float | None = option(None, f"layer-wise lr decay; none: by size, {by_size('layer_lr_decay')}",
                                          valid=within(0, 1, '(]'))
    fix_layer_decay: bool = option(False, 'give the top layer lr*decay instead of the official lr*decay^2')
    batch_size: int = option(32, 'training batch size', valid=POSITIVE)
    epochs: int | None = option(None, "epochs per task; none: the task's (3; 10 for RTE and STS-B)", valid=POSITIVE)
    large_task_epochs: int | None = option(None, 'epochs for MNLI, QNLI and QQP (TUPE: 5); none: as the others',
                                           valid=POSITIVE)
    warmup_fraction: float = option(0.1, 'linear warmup, as a fraction of all steps of a run', valid=within(0, 1, '[)'))
    weight_decay: float = option(0.0, 'decoupled weight decay (0 for GLUE)')
    adam_eps: float = option(1e-6, 'Adam epsilon')
    adam_beta2: float = option(0.999, 'Adam beta2 (TUPE: 0.98)')
    bias_correction: bool = option(False, "Adam's bias correction (the official code has none; TUPE's has it)")
    clip: float = option(1.0, 'global gradient-norm clip')
    loss_reduction: str = option('sum', "a batch's loss: the 'sum' of its examples' losses (the official code) "
                                 "or their 'mean'", choices=['sum', 'mean'])
    dropout: float = option(0.1, 'dropout on the [CLS] vector before the classifier')
    validations_per_epoch: int = option(1, 'dev evaluations per epoch, evenly spaced, the last at its end (TUPE: 2)',
                                        valid=POSITIVE)
    run_score: str = option('last', "a run's score: its 'last' dev evaluation (the paper) or its 'best' (TUPE; the "
                            "best one's weights are then the run's)", choices=['last', 'best'])

    PRESETS = {
        'demo': dict(n_runs=3),
        'paper': dict(n_runs=10, batch_size=32, warmup_fraction=0.1, weight_decay=0.0, max_length=128),
        'tupe': dict(lrs='2e-5,3e-5,4e-5,5e-5', n_runs=5, epochs=10, large_task_epochs=5, warmup_fraction=0.06,
                     layer_lr_decay=1.0, weight_decay=0.01, adam_beta2=0.98, bias_correction=True,
                     validations_per_epoch=2, run_score='best'),
        'none': dict(),
    }

    def validate(self):
        super().validate()
        self.check(self.lr is None or not self.rates,
                   f'--lr {self.lr} would be ignored: --lrs \'{self.lrs}\' (set by you or the tupe preset) gives the '
                   f'rates; give --lrs {self.lr} for that one rate, or leave out --lr')
        self.check(all(lr > 0 for lr in self.rates),
                   f"--lrs must be positive numbers separated by commas, e.g. 2e-5,3e-5, got '{self.lrs}'")
        parse_loggers(self.logger)
        self.task_names = parse_tasks(self.tasks)  # unknown task names and missing folders fail here, before any
        glue_source(self.glue_dir)                 # model is loaded

    @property
    def rates(self): return parse_rates(self.lrs)  # [] without a search


cfg = MyConfig.from_cli()
print(cfg)


# ## 2. The pretrained discriminator
# Its body (embeddings and transformer layers, without the replaced-token head) is loaded once; every run starts
# from a fresh copy of it. The size (from the hidden width) picks the learning rate and the layer-wise decay.

pretrained = load_pretrained(cfg.model, cfg.size)
check_max_length(pretrained, cfg.max_length)
# One recipe per learning rate (several: a search, --lrs); each goes, as it is, to its runs and their optimizers
recipes = recipes_for(pretrained.size, cfg.rates, lr=cfg.lr, layer_lr_decay=cfg.layer_lr_decay,
                      fix_layer_decay=cfg.fix_layer_decay, batch_size=cfg.batch_size, epochs=cfg.epochs,
                      large_task_epochs=cfg.large_task_epochs, warmup_fraction=cfg.warmup_fraction,
                      weight_decay=cfg.weight_decay, adam_eps=cfg.adam_eps, adam_beta2=cfg.adam_beta2,
                      bias_correction=cfg.bias_correction, clip=cfg.clip,
                      loss_reduction=cfg.loss_reduction, dropout=cfg.dropout, max_length=cfg.max_length,
                      validations_per_epoch=cfg.validations_per_epoch, run_score=cfg.run_score)
recipe, rates = recipes[0], ', '.join(f'{r.lr:g}' for r in recipes)
config = pretrained.electra.config
say(f'Model: {pretrained.source}\n  hidden {config.hidden_size}, {config.num_hidden_layers} layers, '
      f'{count_parameters(pretrained.electra) / 1e6:.1f}M parameters -> the {pretrained.size} recipe: '
      f'lr {rates}, layer decay {recipe.layer_lr_decay:g} '
      f"({'fixed' if recipe.fix_layer_decay else 'official'} depths), batch {recipe.batch_size} "
      f'(loss: {recipe.loss_reduction} over the batch), warmup {recipe.warmup_fraction:.0%}, weight decay '
      f"{recipe.weight_decay:g}, Adam {'with' if recipe.bias_correction else 'without'} bias correction (betas 0.9, "
      f'{recipe.adam_beta2:g})')


# ## 3. Where the results go, and what is already done
# A set of runs lives under its group name (the model's, unless `--group_name`): `runs.csv`, `settings.json` and the
# summaries in `<log_dir>/<group>/`, each task's best run so far in `<checkpoint_dir>/<group>/<task>.pth`, the test
# submission in `<output_dir>/<group>/`. The folders are checked now, not after hours of training. With `--resume`,
# the runs that `runs.csv` shows finished (their last epoch is there) are not redone; they must have been made with
# the same model, data and recipe (`settings.json`), else the command is refused; a run stopped midway starts again,
# and a best run whose weights were not saved is trained again, so that a killed and resumed set ends as an
# uninterrupted one. What a killed run left half-written (`.<file>.tmp<pid>`) is removed. A learning-rate search
# (`--lrs`, the `tupe` preset) gives each rate a sub-folder of its own (`lr-3e-05/`, with the same files) and writes
# the search's table (`search.csv`, `search.md`) in the group's folder.

source = glue_source(cfg.glue_dir)
group = group_name_for(pretrained, cfg.group_name)
log_dir = ensure_writable(project_path(cfg.log_dir) / group, '--log_dir')
model_dir = project_path(cfg.checkpoint_dir) / group
if cfg.save_models: ensure_writable(model_dir, '--checkpoint_dir')
output_dir = ensure_writable(project_path(cfg.output_dir) / group, '--output_dir')
claim = claim_run(project_path(cfg.log_dir), group, 'wait for it to end (or stop it), or give this set another '
                  '--group_name', kind='set')  # one process per set: another would write the same files
remove_stale_temps(log_dir, model_dir, output_dir)  # files a killed run left half-written: never read, removed
# one plan per learning rate (one rate without --lrs): its folders, settings and, with --resume, its finished runs
plans = plan_rates(recipes, log_dir, model_dir, pretrained, source, cfg.dev_fraction, cfg.resume)


# ## 4. The tasks
# `[CLS] a [SEP] b [SEP]`, at most 128 tokens, a pair truncated from its longer side. A task the source lacks is
# skipped with a notice; a task without a dev split is evaluated on a fixed 10% of its training set; MRPC and
# STS-B training data are doubled with the two sentences swapped.

say(f'Data: {source}')
data, skipped = load_tasks(cfg.task_names, source, pretrained.tokenizer, cfg.max_length, cfg.dev_fraction)
for name, task_data in data.items():
    print(f'  {name:6} ' + ', '.join(f'{split} {n:,}' for split, n in task_data.sizes().items()) +
          f' -> {recipe.epochs_for(name)} epochs of {-(-len(task_data.train) // recipe.batch_size)} batches')


# ## 5. Finetuning: `n_runs` runs per task (and per learning rate in a search)
# Each run: a fresh head (Xavier-uniform, zero bias) on a fresh copy of the body, Adam without bias correction,
# lr × decay^(n+2−depth) per layer (the head gets lr, the top layer lr × 0.8², the official off-by-one), warmup
# 10% × linear decay, the batch's loss the *sum* of its examples' losses (as the official code; `--loss_reduction mean`
# averages), clipping at 1.0, batches of similar lengths. After every epoch the dev metrics are computed
# and appended to `runs.csv` at once. The best run of each task so far (by its final dev score) is saved as soon as
# the run ends, for the test set and for `--resume`. A run that fails is reported in one line and the others go on.
# Ctrl-C stops the script with a line saying how to resume (`--resume` trains only the missing runs).

device = pick_device(cfg.device)
precision = pick_precision(cfg.precision, device)
seeds = run_seeds(cfg.seed, cfg.n_runs)
print(f'{len(data)} tasks x {cfg.n_runs} runs (seeds {seeds[0]}..{seeds[-1]}) x lr {rates} on {device} ({precision})')
by_rate = finetune_plans(plans, data, pretrained, seeds, precision, device, resume=cfg.resume,
                         save_models=cfg.save_models, loggers=cfg.loggers, log_every=cfg.log_every,
                         config=cfg.to_dict())  # {lr: {task: TaskResult}}
failed = [line for results in by_rate.values() for result in results.values() for line in result.failed]


# ## 6. Dev results
# Per task, over the runs' final dev scores (with `--resume`, the earlier runs' too): the median (the paper's
# number), mean, std, min and max of the main metric (CoLA MCC, STS-B Spearman, accuracy elsewhere; MNLI
# matched). The GLUE dev average is the mean of the medians over the paper's 8 tasks (no WNLI): with tasks missing
# it is not comparable with the paper's. In a learning-rate search, each rate's table is saved in its folder, and the
# search's table shows every rate's median per task, the best rate and its median (TUPE's reported number); the test
# set is then predicted by the best run of the best rate.

title = f'GLUE dev, {pretrained.name}, {cfg.n_runs} runs per task'
results, table = best_rate_results(plans, by_rate, cfg.n_runs, title, log_dir)  # {task: TaskResult} of its best rate
all_runs = [run for result in results.values() for run in result.runs]
skipped.update({name: 'has no run with saved weights' if result.runs else 'failed in every run'
                for name, result in results.items() if result.best is None})


# ## 7. Test submission
# The best dev run of each task predicts its test set; the MNLI model also predicts the diagnostic set AX; WNLI
# predicts the majority class unless `--wnli model`. The GLUE server wants all 11 files in one zip: what is
# missing is listed.

predictions = {}
for name, result in results.items():
    if (name == 'WNLI' and cfg.wnli == 'majority') or result.best is None: continue
    model = classifier_from_result(result, pretrained, device)
    predictions.update(predict_test(name, model, data[name].test, precision=precision))
    if name == 'MNLI':
        predictions.update(predict_test('AX', model, load_test_only('AX', source, pretrained.tokenizer,
                                                                   cfg.max_length), precision=precision))
wnli_test = data['WNLI'].test if 'WNLI' in data else load_test_only('WNLI', source, pretrained.tokenizer)
submission = write_submission(predictions, output_dir,
                              wnli_test_indices=wnli_test['test']['idx'] if 'test' in wnli_test else None)
say(f"Wrote {len(submission.files)} of 11 files and {submission.zip_path}")
if submission.missing:
    say('Missing for a complete GLUE server upload:\n' + missing_files_report(submission, results, skipped))
print(f'Done in {(time.perf_counter() - started) / 60:.1f} min')
claim.release()  # the set's folders are free for another process
stop_if_failed(failed)  # the exit status says so, with how to train only the missing runs

