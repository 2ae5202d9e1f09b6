"""GLUE finetuning: which model, which data, the paper's recipe per run, results over runs, the test submission.

The facts are in RECIPE.md, "GLUE finetuning", "Optimizer and schedule" and "GLUE test submission". The path:
    pretrained discriminator body (checkpoint | Hugging Face folder or hub id | random)
    + task data (bundled sample | classic folder | hub parquet)            -> `load_pretrained`, `load_task_data`
    -> n runs with distinct seeds, each a fastai Learner evaluated on dev after every epoch   -> `finetune_task`
    -> every epoch's dev metrics appended to runs.csv as they arrive                         -> `RunsLog`
    -> each task's best run so far saved as soon as its run ends                             -> `save_finetuned`
    -> (--resume) finished runs skipped, their best's weights read back  -> `finished_runs`, `saved_best`
    -> median / mean / std / min / max of the main metric per task, GLUE dev average         -> `summarize`
    -> the best dev run of each task predicts its test set (MNLI's also AX)                  -> `predict_test`
"""
import contextlib
import copy
import csv
import dataclasses
import json
import math
import os
import re
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper

from .callbacks import (ClipGradNorm, MetricsLogger, Precision, QuietRecorder, SkipValidation, StepCounter,
                        WarmupLinearDecay, autocast_dtype)
from .checkpoint import CHECKPOINT_DIR, load_checkpoint, models_from_checkpoint, newest_checkpoint, \
    tokenizer_from_checkpoint
from .errors import UserError, first_line
from .files import atomic_save, atomic_write_text, safe_load
from .glue import (BUNDLED_GLUE_DIR, GLUE_AVERAGE_TASKS, SUBMISSION_FILES, TASKS, ElectraClassifier, TaskUnavailable, collate,
                   compute_metrics, double_with_swapped, encode, glue_average, glue_dataloader, load_glue_hub,
                   load_glue_tsv, loss_for, main_score, predictions_from_logits, split_off_dev, task_by_name)
from .optim import make_optimizer
from .pretraining import OnDevice, keep_freed_memory, seed_everything
from .text import load_tokenizer, slug

# ---------------------------------------------------------------------------------------------------------------
# The recipe, per model size
# ---------------------------------------------------------------------------------------------------------------
# RECIPE.md: lr 3e-4 / 1e-4 / 5e-5 and layer-wise decay 0.8 / 0.8 / 0.9 for Small / Base / Large.
SIZE_RECIPES = {'small': dict(lr=3e-4, layer_lr_decay=0.8),
                'base': dict(lr=1e-4, layer_lr_decay=0.8),
                'large': dict(lr=5e-5, layer_lr_decay=0.9)}
HIDDEN_TO_SIZE = {128: 'small', 256: 'small', 768: 'base', 1024: 'large'}  # 128: this project's tiny -> Small's


@dataclass
class Recipe:
    """The finetuning hyper-parameters of one task (defaults: ELECTRA-Small, RECIPE.md "GLUE finetuning")."""
    lr: float = 3e-4
    layer_lr_decay: float = 0.8
    fixed_off_by_one: bool = False  # False: the official depths, top layer lr*decay^2 (the paper's numbers)
    batch_size: int = 32
    epochs: int | None = None       # None: the task's own (3; 10 for RTE and STS-B)
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    adam_eps: float = 1e-6
    clip: float = 1.0
    loss_reduction: str = 'sum'     # the batch's per-example losses summed, as the official code does (or 'mean')
    dropout: float = 0.1
    max_length: int = 128

    def epochs_for(self, task):
        return self.epochs or task_by_name(task).epochs


def size_of(electra_config):
    """'small' / 'base' / 'large' from the hidden size (256 / 768 / 1024; the tiny 128 counts as small)."""
    hidden = electra_config.hidden_size
    if hidden in HIDDEN_TO_SIZE: return HIDDEN_TO_SIZE[hidden]
    return 'small' if hidden < 768 else 'base' if hidden < 1024 else 'large'  # an unusual width: the nearest


def recipe_for(size, **overrides):
    """The Recipe of a size with `overrides` (fields whose value is None are left at the size's default)."""
    values = dict(SIZE_RECIPES[size])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Recipe(**values)


# ---------------------------------------------------------------------------------------------------------------
# Which model
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Pretrained:
    electra: torch.nn.Module  # a transformers.ElectraModel: the discriminator body without its head
    tokenizer: object
    name: str                 # short, for folder names: checkpoint stem, folder name, hub id, random-<size>
    source: str               # where it came from, for the printout

    @property
    def size(self): return size_of(self.electra.config)

    @property
    def n_layers(self): return self.electra.config.num_hidden_layers


LOCAL_ALTERNATIVES = ("--model latest (newest checkpoint of pretrain.py), a .pth checkpoint path, a folder saved "
                      "with save_pretrained, or --model random")


RANDOM_BODY_SEED = 0  # --model random: one fixed body, whatever --seed (the runs' seeds) is


def load_pretrained(model='latest', size='small', checkpoint_dir=CHECKPOINT_DIR):
    """The discriminator body and its tokenizer, from one of:

    'latest'   the newest checkpoint of pretrain.py in `checkpoint_dir`
    'random'   a randomly initialised discriminator of `size` with the bundled tokenizer (a baseline; always the
               same initialisation, so that a resumed set of runs starts from the same body)
    a .pth     a checkpoint written by pretrain.py
    a folder   a Hugging Face ELECTRA model saved with `save_pretrained` (its tokenizer in the same folder)
    a hub id   e.g. google/electra-small-discriminator (needs network)
    """
    if model == 'random':
        from transformers import ElectraModel
        from .electra import electra_configs
        tokenizer = load_tokenizer('bundled')
        config = electra_configs(size, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)[1]
        with torch.random.fork_rng(devices=[]):  # a fixed body, without touching the caller's random state
            torch.manual_seed(RANDOM_BODY_SEED)
            electra = ElectraModel(config)
        return Pretrained(electra, tokenizer, f'random-{size}',
                          f'random initialisation ({size}, seed {RANDOM_BODY_SEED})')
    if model == 'latest':
        return _from_checkpoint(newest_checkpoint(checkpoint_dir))
    path = Path(os.path.expanduser(model))
    if path.is_file(): return _from_checkpoint(path)
    if path.is_dir(): return _from_folder(path)
    if model.endswith(('.pth', '.pt')) or model.startswith(('.', '/', '~')) or model.count('/') > 1:
        raise UserError(f"--model '{model}' does not exist; give {LOCAL_ALTERNATIVES}")
    return _from_hub(model)


def _from_checkpoint(path):
    ckpt = load_checkpoint(path)
    _, discriminator = models_from_checkpoint(ckpt)
    return Pretrained(discriminator.electra, tokenizer_from_checkpoint(ckpt), Path(path).stem,
                      f"checkpoint {Path(path).resolve()} (step {ckpt.get('step', '?')})")


def _electra_body(name_or_path):
    from transformers import ElectraModel
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the discriminator's head weights are unused here: not worth a warning
    try:
        return ElectraModel.from_pretrained(str(name_or_path))
    finally:
        hf_logging.set_verbosity(verbosity)


def _from_folder(folder):
    import json
    config_file = folder / 'config.json'
    if not config_file.is_file():
        raise UserError(f"--model folder '{folder}' has no config.json; give a folder saved with save_pretrained "
                        f"or {LOCAL_ALTERNATIVES}")
    model_type = json.loads(config_file.read_text()).get('model_type')
    if model_type != 'electra':
        raise UserError(f"--model folder '{folder}' holds a '{model_type}' model, not ELECTRA")
    electra = _electra_body(folder)
    try:
        tokenizer = load_tokenizer(str(folder))
    except (UserError, OSError, ValueError, TypeError):
        tokenizer = load_tokenizer('bundled')
        if len(tokenizer) != electra.config.vocab_size:
            raise UserError(f"--model folder '{folder}' has no tokenizer and its vocabulary "
                            f"({electra.config.vocab_size}) is not the bundled one ({len(tokenizer)})") from None
        print(f'{folder} has no tokenizer: using the bundled BERT uncased vocabulary (same size)')
    return Pretrained(electra, tokenizer, folder.name, f'Hugging Face folder {folder.resolve()}')


def _from_hub(model_id):
    try:
        electra = _electra_body(model_id)
        tokenizer = load_tokenizer(model_id)
    except UserError as e:
        raise UserError(f"cannot load '{model_id}' from the Hugging Face hub ({e}); with no network give "
                        f"{LOCAL_ALTERNATIVES}") from e
    except Exception as e:  # offline, unknown id, not an ELECTRA model: one line with the local alternatives
        raise UserError(f"cannot load '{model_id}' from the Hugging Face hub ({first_line(e)}); with no network "
                        f"give {LOCAL_ALTERNATIVES}") from e
    return Pretrained(electra, tokenizer, model_id.replace('/', '_'), f'Hugging Face hub {model_id}')


def check_max_length(pretrained, max_length):
    """Refuse, before any training, a length the model has no position embeddings for."""
    positions = pretrained.electra.config.max_position_embeddings
    if max_length > positions:
        raise UserError(f"--max_length {max_length} is above the model's {positions} positions; give --max_length "
                        f'{positions} or less')


def build_classifier(pretrained, task, dropout=0.1):
    """A fresh copy of the pretrained body with the paper's head (dropout, one Xavier-initialised linear layer)."""
    return ElectraClassifier(copy.deepcopy(pretrained.electra), task_by_name(task).n_outputs, dropout)


# ---------------------------------------------------------------------------------------------------------------
# Which data
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class GlueSource:
    kind: str          # 'tsv' (classic folder), 'parquet' (a local copy of the hub's files) or 'hub'
    path: Path | None

    def __str__(self):
        return {'tsv': f'classic GLUE folder {self.path}', 'parquet': f'hub parquet files in {self.path}',
                'hub': 'Hugging Face hub nyu-mll/glue'}[self.kind]

    def load(self, task):
        if self.kind == 'tsv': return load_glue_tsv(task, self.path)
        return load_glue_hub(task, parquet_dir=self.path if self.kind == 'parquet' else None)


def glue_source(glue_dir='bundled'):
    """'bundled' (datasets/glue_sample), 'hub' (nyu-mll/glue), a classic-layout folder or a folder of the hub's
    parquet files (`<config>/<split>-*.parquet`)."""
    if glue_dir in ('', 'bundled', None): return GlueSource('tsv', BUNDLED_GLUE_DIR)
    if glue_dir == 'hub': return GlueSource('hub', None)
    path = Path(os.path.expanduser(str(glue_dir)))
    if not path.is_dir():
        raise UserError(f"--glue_dir '{glue_dir}' is not a folder; give 'bundled', 'hub', or a folder in the classic "
                        "download_glue_data.py layout (CoLA/train.tsv, ...)")
    if any(path.glob('*/*.parquet')): return GlueSource('parquet', path)
    known = {p for task in TASKS.values() for _, rel in task.tsv_files for p in [Path(rel).parts[0]]}
    if not any((path / name).is_dir() for name in known):
        raise UserError(f"--glue_dir '{glue_dir}' holds no GLUE task folder ({', '.join(sorted(known))}); give the "
                        "folder that download_glue_data.py wrote, 'bundled' or 'hub'")
    return GlueSource('tsv', path)


def parse_tasks(tasks):
    """'all' or a comma list ('cola,sst2,RTE') -> official names in GLUE order; AX is added by MNLI, never trained."""
    if tasks in ('', 'all', None): return [name for name, task in TASKS.items() if task.predicted_by is None]
    names = [task_by_name(t.strip()).name for t in tasks.split(',') if t.strip()]
    predicted = [n for n in names if TASKS[n].predicted_by]
    if predicted:
        raise UserError(f"{predicted[0]} has no training data: the {TASKS[predicted[0]].predicted_by} model "
                        f"predicts it; add {TASKS[predicted[0]].predicted_by} to --tasks instead")
    return [name for name in TASKS if name in names]


@dataclass
class TaskData:
    task: object                    # GlueTask
    train: object                   # encoded training set (MRPC, STS-B: doubled with swapped sentences)
    dev: dict                       # {split: encoded}; the first is the one the main score comes from
    test: dict                      # {split: encoded}, possibly empty
    notes: list = field(default_factory=list)

    def sizes(self):
        return {'train': len(self.train), **{s: len(d) for s, d in self.dev.items()},
                **{s: len(d) for s, d in self.test.items()}}


def load_task_data(task, source, tokenizer, max_length=128, dev_fraction=0.1, notify=print):
    """A task's train / dev / test, encoded; None (after a one-line notice) when the task cannot be trained.

    A missing dev split is carved out of train with `split_off_dev` (the same rows for every run). MRPC and
    STS-B training data are doubled with the two sentences swapped *after* that split, so no dev row leaks.
    """
    task = task_by_name(task)
    try:
        raw = source.load(task)
    except TaskUnavailable as e:
        notify(f'{task.name}: skipped ({e})')
        return None
    if 'train' not in raw:
        notify(f'{task.name}: skipped (no training split in {source})')
        return None
    train, notes = raw['train'], []
    dev = {s: raw[s] for s in task.dev_splits if s in raw}
    if not dev:
        train, held_out = split_off_dev(train, dev_fraction, seed=0)
        dev = {task.dev_splits[0]: held_out}
        notes.append(f'no dev split in {source}: dev = a fixed {dev_fraction:.0%} of train '
                     f'({len(held_out)} rows), trained on the other {len(train)}')
        notify(f'{task.name}: {notes[-1]}')
    if task.doubled: train = double_with_swapped(train)
    enc = lambda ds: encode(ds, tokenizer, max_length)
    return TaskData(task, enc(train), {s: enc(d) for s, d in dev.items()},
                    {s: enc(raw[s]) for s in task.test_splits if s in raw}, notes)


def load_tasks(names, source, tokenizer, max_length=128, dev_fraction=0.1, notify=print):
    """`load_task_data` for each task -> ({name: TaskData}, {name: why it was skipped})."""
    data, skipped = {}, {}
    for name in names:
        reasons = []
        loaded = load_task_data(name, source, tokenizer, max_length, dev_fraction,
                                notify=lambda msg: (reasons.append(msg.split(': ', 1)[-1]), notify(msg)))
        if loaded is None: skipped[name] = reasons[-1] if reasons else 'skipped'
        else: data[name] = loaded
    if not data:
        raise UserError(f"no task can be finetuned from {source}: " +
                        '; '.join(f'{n} {why}' for n, why in skipped.items()) +
                        "; give a --glue_dir holding these tasks' files (the download_glue_data.py layout or the "
                        "hub's parquet files), 'bundled', or other --tasks")
    return data, skipped


def load_test_only(task, source, tokenizer, max_length=128):
    """Test splits of a task without training data (AX), encoded; {} when absent."""
    task = task_by_name(task)
    try: raw = source.load(task)
    except TaskUnavailable: return {}
    return {s: encode(raw[s], tokenizer, max_length) for s in task.test_splits if s in raw}


# ---------------------------------------------------------------------------------------------------------------
# Prediction and dev evaluation
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(model, encoded, batch_size=128, precision='fp32'):
    """(N, n_outputs) float logits in dataset order; batches sorted by length so little goes to padding."""
    device = next(model.parameters()).device
    lengths = np.array([len(ids) for ids in encoded['input_ids']])
    order = np.argsort(lengths, kind='stable')
    batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    loader = torch.utils.data.DataLoader(encoded, batch_sampler=batches, collate_fn=collate)
    dtype = autocast_dtype(precision)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for input_ids, attention_mask, token_type_ids, _ in loader:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids.to(device), attention_mask.to(device), token_type_ids.to(device))
            outputs.append(logits.float().cpu())
    finally:
        model.train(was_training)
    logits = torch.cat(outputs)                  # (N, n_outputs), in length order
    return logits[torch.as_tensor(np.argsort(order, kind='stable'))]  # back to dataset order


def predict(task, model, encoded, batch_size=128, precision='fp32'):
    """(N,) class indices (tsv label order) or STS-B scores (unclipped), in dataset order."""
    return predictions_from_logits(task, predict_logits(model, encoded, batch_size, precision))


def evaluate(task, model, dev, batch_size=128, precision='fp32'):
    """The task's metrics on each dev split: the first split's unprefixed ('acc'), the others prefixed
    ('mismatched_acc' for MNLI's dev_mismatched)."""
    task = task_by_name(task)
    metrics = {}
    for i, (split, encoded) in enumerate(dev.items()):
        scores = compute_metrics(task, predict(task, model, encoded, batch_size, precision), encoded['label'])
        prefix = '' if i == 0 else split.split('_')[-1] + '_'
        metrics.update({prefix + k: v for k, v in scores.items()})
    return metrics


class DevEvaluation(Callback):
    """After every epoch: the mean training loss and the dev metrics, handed to `on_epoch(row)` at once."""
    order = 80

    def __init__(self, task, dev, on_epoch, batch_size=128, precision='fp32', loss_reduction=Recipe.loss_reduction):
        self.task, self.dev, self.on_epoch = task_by_name(task), dev, on_epoch
        self.batch_size, self.precision, self.loss_reduction = batch_size, precision, loss_reduction
        self.history = []

    def before_epoch(self):
        self.loss_sum, self.n_examples, self.t0 = 0.0, 0, time.perf_counter()

    def after_batch(self):
        if self.training:
            n = len(self.learn.yb[0])
            # a tensor: no device sync per batch. Per example, whether the batch's losses were summed or averaged
            self.loss_sum += self.learn.loss.detach() * (1 if self.loss_reduction == 'sum' else n)
            self.n_examples += n

    def after_epoch(self):
        metrics = evaluate(self.task, self.learn.model, self.dev, self.batch_size, self.precision)
        row = dict(epoch=self.epoch + 1, step=self.learn.step,
                   train_loss=float(self.loss_sum) / max(1, self.n_examples), **metrics,
                   score=main_score(self.task, metrics), seconds=time.perf_counter() - self.t0)
        self.history.append(row)
        self.on_epoch(row)


# ---------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------
def finetuning_optimizer(model, recipe, n_layers):
    """Adam without bias correction, no weight decay, lr * decay^(n+2-depth) per layer (RECIPE.md)."""
    return make_optimizer(model, lr=recipe.lr, weight_decay=recipe.weight_decay, eps=recipe.adam_eps,
                          layer_lr_decay=recipe.layer_lr_decay, n_layers=n_layers,
                          fixed_off_by_one=recipe.fixed_off_by_one)


def finetuning_learner(model, train_dl, task, recipe, n_layers, epochs, precision='fp32',
                       device=torch.device('cpu'), extra_cbs=()):
    """A plain fastai Learner: batches (input_ids, attention_mask, token_type_ids, labels) give xb = the first
    three, yb = labels. Warmup is 10% of all steps, and the linear decay reaches 0 at the end of the last epoch."""
    model.to(device)
    if device.type == 'cpu': keep_freed_memory()
    opt = finetuning_optimizer(model, recipe, n_layers)
    total_steps = epochs * len(train_dl)
    warmup_steps = int(recipe.warmup_fraction * total_steps)
    cbs = [StepCounter(), SkipValidation(), WarmupLinearDecay(recipe.lr, total_steps, warmup_steps),
           Precision(precision, device.type), ClipGradNorm(recipe.clip), QuietRecorder(), *extra_cbs]
    # As in pretraining, nothing in a step waits for the GPU: batches copied without blocking, loss kept there
    learn = Learner(DataLoaders(OnDevice(train_dl, device), []), model,
                    loss_func=loss_for(task, recipe.loss_reduction),
                    opt_func=lambda params, lr: OptimWrapper(opt=opt), lr=recipe.lr, cbs=cbs, wd_bn_bias=True,
                    train_bn=False)
    learn.recorder.valid_metrics = False
    learn.total_steps = total_steps
    return learn


@dataclass
class RunResult:
    task: str
    run: int
    seed: int
    history: list            # one row per epoch: epoch, step, train_loss, metrics, score, seconds
    state_dict: dict = None  # the finetuned weights (CPU), kept only for the best run of a task

    @property
    def final(self): return self.history[-1]

    @property
    def score(self): return self.final['score']


def finetune_run(data, pretrained, recipe, seed, run=0, precision='fp32', device=torch.device('cpu'),
                 log_dir=None, loggers=('csv', 'tensorboard'), log_every=50, on_epoch=None, config=None):
    """Finetune a fresh copy of the pretrained body on one task with one seed; dev metrics after every epoch.

    The model is evaluated as it stands after the last epoch (no early stopping), as in the paper.
    """
    task = data.task
    seed_everything(seed)  # head initialisation, dropout, batch order
    model = build_classifier(pretrained, task, recipe.dropout)
    train_dl = glue_dataloader(data.train, recipe.batch_size, shuffle=True, seed=seed,
                               pad_id=pretrained.tokenizer.pad_token_id)
    epochs = recipe.epochs_for(task)
    evaluation = DevEvaluation(task, data.dev, on_epoch or (lambda row: None), precision=precision,
                               loss_reduction=recipe.loss_reduction)
    learn = finetuning_learner(model, train_dl, task, recipe, pretrained.n_layers, epochs, precision, device,
                               [evaluation])
    if log_dir is not None and loggers:
        # The scheduled lr before the layer scale: the head's lr (MetricsLogger's own 'lr' is the first group's).
        head_lr = lambda pred: {'head_lr': learn.opt.opt.param_groups[0]['lr']}
        metrics_logger = MetricsLogger(log_dir, lambda pred: {}, log_every, loggers, run_name=Path(log_dir).name,
                                       config=config, total_steps=learn.total_steps, snapshot_fn=head_lr)
        learn.add_cbs([metrics_logger, DevMetricsToLoggers(metrics_logger, evaluation)])
    with contextlib.ExitStack() as quiet:  # one printed line per epoch (on_epoch) instead of fastai's table and bar
        quiet.enter_context(learn.no_logging())
        if hasattr(learn, 'no_bar'): quiet.enter_context(learn.no_bar())  # when fastai's progress bar is loaded
        learn.fit(epochs)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return RunResult(task.name, run, seed, evaluation.history, state)


class DevMetricsToLoggers(Callback):
    """Sends each epoch's dev metrics to the run's TensorBoard / Neptune (the CSV gets them via runs.csv)."""
    order = 90

    def __init__(self, metrics_logger, evaluation): self.metrics_logger, self.evaluation = metrics_logger, evaluation

    def after_epoch(self):
        row = self.evaluation.history[-1]
        values = {'step': row['step'], **{f'dev_{k}': v for k, v in row.items() if k not in ('epoch', 'step')}}
        if hasattr(self.metrics_logger, 'backends'): self.metrics_logger.log(values, skip=('csv',))


# ---------------------------------------------------------------------------------------------------------------
# Runs of a task, and where their numbers go
# ---------------------------------------------------------------------------------------------------------------
METRIC_COLUMNS = ('acc', 'f1', 'mcc', 'spearman', 'pearson', 'mismatched_acc')
RUN_COLUMNS = ('task', 'run', 'seed', 'epoch', 'step', 'train_loss', 'main_metric', 'score', *METRIC_COLUMNS,
               'seconds')
SETTINGS_FILE = 'settings.json'  # beside runs.csv: what its runs were made with, checked by --resume


class RunsLog:
    """runs.csv: one row per (task, run, epoch), appended and flushed as each epoch ends, so a crash keeps the rows
    so far. A failing disk is reported once; the rows stay in `rows` and training goes on.

    A new set of runs moves an earlier runs.csv (and its settings.json) aside under its time stamp, never
    overwriting it; `append=True` (--resume) adds to it instead. `settings` (`run_settings`) go to settings.json.
    """

    def __init__(self, path, append=False, settings=None):
        self.path, self.rows, self.failed = Path(path), [], False
        settings_file = self.path.with_name(SETTINGS_FILE)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            earlier = self.path.exists() and self.path.stat().st_size > 0
            if append and earlier:
                _end_with_newline(self.path)  # a line cut short by a crash must not swallow the next row
            else:
                if earlier: _keep_aside(self.path, settings_file)
                with self.path.open('w', newline='') as f: csv.writer(f).writerow(RUN_COLUMNS)
            if settings is not None and not (append and earlier and settings_file.exists()):
                atomic_write_text(settings_file, json.dumps(settings, indent=1) + '\n')
        except OSError as e:
            self._fail(e)

    def _fail(self, e):
        if not self.failed: warnings.warn(f'cannot write {self.path} ({e}); results are kept in memory')
        self.failed = True

    def append(self, task, run, seed, row):
        task = task_by_name(task)
        full = dict(task=task.name, run=run, seed=seed, main_metric=task.main_metric, **row)
        self.rows.append(full)
        if self.failed: return
        try:
            with self.path.open('a', newline='') as f:
                csv.writer(f).writerow([_cell(full.get(c)) for c in RUN_COLUMNS])
        except OSError as e:
            self._fail(e)


def _cell(value):
    if value is None: return ''
    return f'{value:.6g}' if isinstance(value, float) else value


def _keep_aside(*paths):
    """runs.csv -> runs.<time stamp>.csv (settings.json likewise, same stamp), never over an existing file."""
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(paths[0].stat().st_mtime))
    aside = lambda p, tag: p.with_name(f'{p.stem}.{tag}{p.suffix}')
    tag, n = stamp, 1
    while any(aside(p, tag).exists() for p in paths): tag, n = f'{stamp}-{n}', n + 1
    for p in paths:
        if p.exists(): p.rename(aside(p, tag))


def _end_with_newline(path):
    with open(path, 'rb+') as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n': f.write(b'\n')


def run_settings(pretrained, recipe, source, dev_fraction):
    """What decides a run's numbers besides its seed: the model, the data and the recipe. Runs resumed into a set
    must have been made with the same, or their scores would not be comparable."""
    return dict(model=pretrained.source, data=str(source), dev_fraction=dev_fraction, **dataclasses.asdict(recipe))


def finished_runs(log_dir, settings, recipe, notify=print):
    """For --resume: the runs in `log_dir`/runs.csv that reached their last epoch, {task: {(run, seed): RunResult}}.

    Refuses in one line when they were made with other `settings` (see `run_settings`).
    """
    log_dir = Path(log_dir)
    runs_csv = log_dir / 'runs.csv'
    if not runs_csv.is_file() or runs_csv.stat().st_size == 0:
        notify(f'--resume: no runs in {runs_csv} yet: every run is trained')
        return {}
    _check_settings(log_dir / SETTINGS_FILE, settings, notify)
    finished = {}
    for run in read_runs(runs_csv):
        if run.final['epoch'] == recipe.epochs_for(run.task):
            finished.setdefault(run.task, {})[(run.run, run.seed)] = run
    return finished


def _check_settings(path, settings, notify):
    if not path.is_file():
        notify(f'--resume: no {path} (written by an older version?): the earlier runs\' settings are not checked')
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f'--resume: cannot read {path} ({e}); drop --resume to start a new set of runs') from None
    now = json.loads(json.dumps(settings))  # as saved: tuples become lists
    changed = [f'{k} {saved.get(k)!r} -> {now.get(k)!r}' for k in [*now, *(k for k in saved if k not in now)]
               if saved.get(k) != now.get(k)]
    if changed:
        raise UserError(f"--resume: the runs in {path.parent} were made with other settings ({'; '.join(changed)}); "
                        'drop --resume to start a new set of runs there (the old runs.csv is kept aside), or give '
                        'a new --group_name')


def read_runs(path):
    """runs.csv -> RunResults, one per (task, run, seed), with the last row of each epoch (a run redone after an
    interruption appends its epochs again). A row cut short by a crash is ignored."""
    try:
        with open(path, newline='') as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f'--resume: cannot read {path} ({e}); drop --resume to start a new set of runs') from None
    missing = [c for c in RUN_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise UserError(f"--resume: {path} has no column {', '.join(missing)} (another version wrote it); drop "
                        '--resume to start a new set of runs')
    epochs_of = {}
    for row in rows:
        try:
            key = (task_by_name(row['task']).name, int(row['run']), int(row['seed']))
            epoch = _history_row(row)
        except (TypeError, ValueError, UserError):
            continue
        epochs_of.setdefault(key, {})[epoch['epoch']] = epoch
    return [RunResult(*key, [epochs[e] for e in sorted(epochs)]) for key, epochs in epochs_of.items()]


def _history_row(row):
    """A runs.csv row -> the row `DevEvaluation` made: numbers, no empty metric cells. Raises if cut short."""
    if row.get('seconds') in (None, ''): raise ValueError('incomplete row')  # the last column: the row is whole
    out = dict(epoch=int(row['epoch']), step=int(row['step']), train_loss=float(row['train_loss']))
    out.update({m: float(row[m]) for m in METRIC_COLUMNS if row.get(m) not in (None, '')})
    out.update(score=float(row['score']), seconds=float(row['seconds']))
    return out


@dataclass
class TaskResult:
    task: str
    runs: list                  # RunResult of every finished run, earlier ones (--resume) included, without weights
    best: RunResult | None      # the best finished run that has weights; None when every run failed
    failed: list = field(default_factory=list)  # one line per run that failed


def finetune_task(data, pretrained, recipe, seeds, runs_log=None, precision='fp32', device=torch.device('cpu'),
                  log_root=None, loggers=('csv', 'tensorboard'), log_every=50, config=None, verbose=True,
                  finished=None, best=None, on_best=None, notify=print):
    """One run per seed; every epoch's dev metrics go to `runs_log` as they arrive. Keeps the best run's weights.

    `finished` {(run, seed): RunResult}: runs an earlier invocation finished (--resume): counted, not redone.
    `best`: the best of them with its weights (`saved_best`), for the new runs to beat. `on_best(run)` is called
    whenever a run becomes the best so far (the script saves it at once). A run that fails is reported in one
    line and the other runs go on.
    """
    task, finished = data.task, finished or {}
    if best is not None and (best.run, best.seed) not in set(enumerate(seeds)):
        best = None  # a run outside this plan (--n_runs or --seed changed): neither in the summary nor predicting
    done = [run for run, seed in enumerate(seeds) if (run, seed) in finished]
    if done:
        notify(f"{task.name}: run {', '.join(str(run + 1) for run in done)} of {len(seeds)} already finished "
               '(in runs.csv): skipped')
    runs, failed = [], []
    for run, seed in enumerate(seeds):
        if (run, seed) in finished:
            runs.append(finished[(run, seed)])
            continue

        def on_epoch(row, run=run, seed=seed):
            if runs_log is not None: runs_log.append(task, run, seed, row)
            if verbose:
                others = ', '.join(f'{k} {row[k]:.1f}' for k in METRIC_COLUMNS if k in row and k != task.main_metric)
                print(f"{task.name} run {run + 1}/{len(seeds)} (seed {seed}) epoch {row['epoch']}: "
                      f"{task.main_metric} {row['score']:.2f}{' (' + others + ')' if others else ''}, "
                      f"train loss {row['train_loss']:.4f}, {row['seconds']:.1f} s")
        log_dir = Path(log_root) / f'{slug(task.name)}_run{run}_seed{seed}' if log_root else None
        try:
            result = finetune_run(data, pretrained, recipe, seed, run, precision, device, log_dir, loggers, log_every,
                                  on_epoch, config)
        except Exception as e:  # out of memory, a bad batch...: the other runs and tasks still count
            failed.append(_run_failed(task, run, seed, len(seeds), e, log_dir))
            notify(failed[-1] + '; the other runs go on')
            continue
        runs.append(RunResult(result.task, run, seed, result.history))
        if best is None or result.score > best.score:
            best = result
            if on_best is not None:
                try: on_best(best)
                except OSError as e:
                    notify(f'{task.name}: cannot save its best run so far ({e}); the test predictions still use it, '
                           'a later --resume cannot')
    top = max(runs, key=lambda r: r.score, default=None)
    if top is not None and (best is None or top.score > best.score):  # e.g. resumed after --save_models false
        instead = f'run {best.run + 1} (seed {best.seed}) predicts the test set' if best else 'no test predictions'
        notify(f'{task.name}: the best dev run (run {top.run + 1}, seed {top.seed}) has no saved weights; {instead}')
    return TaskResult(task.name, runs, best, failed)


def _run_failed(task, run, seed, n_runs, error, log_dir):
    """One line naming the run and the error; the full traceback goes to the run's log folder."""
    where = ''
    if log_dir is not None:
        try:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / 'error.txt').write_text(''.join(traceback.format_exception(error)))
            where = f' (traceback in {Path(log_dir) / "error.txt"})'
        except OSError:
            pass
    return (f'{task.name} run {run + 1}/{n_runs} (seed {seed}) failed: {type(error).__name__}: '
            f'{first_line(error)}{where}')


FINETUNED_FORMAT = 'electra-fastai-finetuned/1'


def save_finetuned(run, pretrained, path):
    """A run's classifier weights (a RunResult with `state_dict`), with what rebuilds it (`load_finetuned`) and what
    recognises it when resuming (task, run, seed, dev scores). Plain values and tensors only: it loads with
    torch.load(weights_only=True). Written to a temporary file, then renamed."""
    dev = {k: v.item() if hasattr(v, 'item') else v for k, v in run.final.items()}  # numpy scalars -> plain
    return atomic_save(dict(format=FINETUNED_FORMAT, task=run.task, run=run.run, seed=run.seed, dev=dev,
                            electra_config=pretrained.electra.config.to_dict(),
                            tokenizer=pretrained.tokenizer.backend_tokenizer.to_str(),
                            state_dict=run.state_dict), path)


def read_finetuned(path):
    """The dict `save_finetuned` wrote, refusing truncated or foreign files with one clear line."""
    saved = safe_load(path, 'finetuned model', 'finetune again or give another file')
    if not isinstance(saved, dict) or not {'task', 'electra_config', 'tokenizer', 'state_dict'} <= saved.keys():
        raise UserError(f"'{path}' is not a finetuned model of this project (finetune.py writes them to "
                        'checkpoints/finetune/)')
    return saved


def load_finetuned(path):
    """(ElectraClassifier, tokenizer) from a file of `save_finetuned` (older files without 'format' load too)."""
    from tokenizers import Tokenizer
    from transformers import ElectraConfig, ElectraModel, ElectraTokenizerFast
    saved = read_finetuned(path)
    model = ElectraClassifier(ElectraModel(ElectraConfig.from_dict(saved['electra_config'])),
                              task_by_name(saved['task']).n_outputs)
    model.load_state_dict(saved['state_dict'])
    return model, ElectraTokenizerFast(tokenizer_object=Tokenizer.from_str(saved['tokenizer']))


def saved_best(path, finished):
    """For --resume: the run whose weights `save_finetuned` left at `path`, with them, if it is one of the
    `finished` runs ({(run, seed): RunResult}, same dev score); else None (absent, unreadable or another run's)."""
    if not Path(path).is_file(): return None
    try:
        saved = read_finetuned(path)
        run = finished.get((saved.get('run'), saved.get('seed')))
        if run is None or not math.isclose(run.score, float(saved['dev']['score']), rel_tol=1e-4, abs_tol=1e-4):
            return None
    except (UserError, KeyError, TypeError, ValueError):
        return None
    return dataclasses.replace(run, state_dict=saved['state_dict'])


# ---------------------------------------------------------------------------------------------------------------
# Results over runs
# ---------------------------------------------------------------------------------------------------------------
def summarize(runs):
    """Per task, over the runs' final-epoch dev scores: median (the paper's statistic), mean, std, min, max of the
    main metric, and the median of the other metrics. Then a 'GLUE avg' row: the mean of the medians over the
    paper's 8 tasks (no WNLI) that are present. `runs`: RunResults, or the rows of runs.csv as a DataFrame.

    Returns (DataFrame indexed by task, GlueAverage).
    """
    import pandas as pd
    final = final_rows(runs)
    rows = {}
    for name in [t for t in TASKS if t in set(final.task)]:
        scores = final[final.task == name]
        task = TASKS[name]
        s = scores['score'].astype(float)
        row = dict(metric=task.main_metric, runs=len(s), median=s.median(), mean=s.mean(),
                   std=s.std(ddof=1) if len(s) > 1 else math.nan, min=s.min(), max=s.max(),
                   best_seed=int(scores.loc[s.idxmax(), 'seed']))
        others = [m for m in (*task.metrics, 'mismatched_acc') if m != task.main_metric and m in scores
                  and scores[m].notna().any()]
        row['other (median)'] = ', '.join(f'{m} {scores[m].median():.1f}' for m in others)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient='index')
    table.index.name = 'task'
    average = glue_average({name: row['median'] for name, row in rows.items()})
    if rows:
        table.loc['GLUE avg'] = dict(metric='median', runs=math.nan, median=average.score, mean=math.nan,
                                     std=math.nan, min=math.nan, max=math.nan, best_seed=math.nan,
                                     **{'other (median)': _average_note(average)})
    return table, average


def final_rows(runs):
    """Each run's last epoch as a DataFrame row, from RunResults or from the rows of runs.csv (a DataFrame)."""
    import pandas as pd
    if not isinstance(runs, pd.DataFrame):
        return pd.DataFrame([dict(task=r.task, run=r.run, seed=r.seed, **r.final) for r in runs])
    return runs.sort_values('epoch', kind='stable').groupby(['task', 'run', 'seed']).tail(1)


def _average_note(average):
    if not average.missing: return f'{len(GLUE_AVERAGE_TASKS)} tasks, no WNLI (the paper\'s GLUE dev average)'
    return f"not comparable with the paper: no {', '.join(average.missing)}"


def format_table(table):
    """The summary as aligned text (numbers with 2 decimals)."""
    return _formatted(table).to_string()


def _formatted(table):
    out = table.copy()
    for col in ('median', 'mean', 'std', 'min', 'max'):
        out[col] = out[col].map(lambda v: '' if _is_missing(v) else f'{v:.2f}')
    for col in ('runs', 'best_seed'):
        out[col] = out[col].map(lambda v: '' if _is_missing(v) else f'{int(v)}')
    return out


def _is_missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def save_summary(table, out_dir, title=''):
    """summary.csv (full precision) and summary.md (2 decimals) in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / 'summary.csv', float_format='%.4f')
    shown = _formatted(table).reset_index()
    lines = [f'# {title}', ''] if title else []
    lines += ['| ' + ' | '.join(shown.columns) + ' |', '|' + '---|' * len(shown.columns)]
    lines += ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in shown.itertuples(index=False)]
    (out_dir / 'summary.md').write_text('\n'.join(lines) + '\n')
    return out_dir / 'summary.csv', out_dir / 'summary.md'


def plot_runs(runs, ax=None):
    """Each run's final dev score per task (dots) and the median (bar): the spread over seeds. `runs`: RunResults,
    or the rows of runs.csv as a DataFrame."""
    import matplotlib.pyplot as plt
    final = final_rows(runs)
    tasks = [t for t in TASKS if t in set(final.task)]
    ax = ax or plt.subplots(figsize=(1.4 * len(tasks) + 2, 3.5))[1]
    for i, name in enumerate(tasks):
        scores = final[final.task == name]['score'].to_numpy(float)
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(scores))
        ax.plot(i + jitter, scores, 'o', alpha=0.7)
        ax.hlines(np.median(scores), i - 0.3, i + 0.3, color='black')
    ax.set_xticks(range(len(tasks)), [f'{t}\n({TASKS[t].main_metric})' for t in tasks])
    ax.set(ylabel='dev score (final epoch)', title='Spread over runs (bar: median)')
    return ax


# ---------------------------------------------------------------------------------------------------------------
# Test predictions
# ---------------------------------------------------------------------------------------------------------------
def predict_test(task, model, test, batch_size=128, precision='fp32'):
    """{submission stem: (test indices, predictions)} for the task's test splits present in `test`."""
    task = task_by_name(task)
    out = {}
    for split, stem_file in task.submission_files:
        if split in test:
            out[Path(stem_file).stem] = (np.asarray(test[split]['idx']),
                                         predict(task, model, test[split], batch_size, precision))
    return out


def classifier_from_result(result, pretrained, device=torch.device('cpu')):
    """The best run's model, rebuilt from its kept weights, in eval mode on `device`."""
    model = build_classifier(pretrained, result.task)
    model.load_state_dict(result.best.state_dict)
    return model.to(device).eval()


def missing_files_report(submission, trained, skipped):
    """Why each submission file is missing: one line per file, for a complete GLUE server upload."""
    lines = []
    for stem in submission.missing:
        task_name = SUBMISSION_FILES[stem][0]
        source_task = TASKS[task_name].predicted_by or task_name
        if source_task in skipped: why = f'{source_task} {skipped[source_task]}'
        elif source_task not in trained: why = f'{source_task} not in --tasks'
        else: why = f'no {task_name} test split in the data'
        lines.append(f'  {stem}.tsv: {why}')
    return '\n'.join(lines)


def group_name_for(pretrained, given=''):
    return given or re.sub(r'[^A-Za-z0-9_.-]+', '_', pretrained.name)


def run_seeds(seed, n_runs):
    """Run i gets seed + i: distinct, recorded in runs.csv, reproducible."""
    return [seed + i for i in range(n_runs)]
