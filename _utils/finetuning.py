"""One GLUE finetuning run with the paper's recipe: the recipe per model size, the Learner, dev metrics after every
epoch, and the test-set predictions of a finetuned model.

The facts are in RECIPE.md, "GLUE finetuning", "Optimizer and schedule" and "GLUE test submission". The whole path:
    pretrained discriminator body (checkpoint | Hugging Face folder or hub id | random)       -> models.load_pretrained
    + task data (bundled sample | classic folder | hub parquet)                       -> glue_data.load_tasks
    -> n runs with distinct seeds, each evaluated on dev after every epoch   -> runs.finetune_task -> `finetune_run`
    -> every epoch's dev metrics in runs.csv, each task's best run saved, --resume -> runs (RunsLog, saved_best)
    -> median / mean / std / min / max per task, GLUE dev average                        -> runs.summarize
    -> the best dev run of each task predicts its test set (MNLI's also AX)              -> `predict_test`
"""
import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback

from .callbacks import autocast_dtype
from .classifier import loss_for
from .glue import SUBMISSION_FILES, TASKS, task_by_name
from .glue_data import collate, glue_dataloader
from .glue_scores import compute_metrics, main_score, predictions_from_logits
from .learner import build_learner, seed_everything
from .loggers import MetricsLogger
from .glue_models import build_classifier
from .optim import make_optimizer

# ---------------------------------------------------------------------------------------------------------------
# The recipe, per model size
# ---------------------------------------------------------------------------------------------------------------
# RECIPE.md: lr 3e-4 / 1e-4 / 5e-5 and layer-wise decay 0.8 / 0.8 / 0.9 for Small / Base / Large.
SIZE_RECIPES = {'small': dict(lr=3e-4, layer_lr_decay=0.8),
                'base': dict(lr=1e-4, layer_lr_decay=0.8),
                'large': dict(lr=5e-5, layer_lr_decay=0.9)}


@dataclass
class Recipe:
    """The finetuning hyper-parameters of one task (defaults: ELECTRA-Small, RECIPE.md "GLUE finetuning")."""
    lr: float = SIZE_RECIPES['small']['lr']
    layer_lr_decay: float = SIZE_RECIPES['small']['layer_lr_decay']
    fix_layer_decay: bool = False  # False: the official depths, top layer lr*decay^2 (the paper's numbers)
    batch_size: int = 32
    epochs: int | None = None       # None: the task's own (3; 10 for RTE and STS-B)
    large_task_epochs: int | None = None  # MNLI, QNLI, QQP (TUPE's protocol: 5); None: as `epochs`
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0
    adam_eps: float = 1e-6
    adam_beta2: float = 0.999
    bias_correction: bool = False  # the official code's Adam has none; TUPE's finetuning (fairseq's Adam) has it
    clip: float = 1.0
    loss_reduction: str = 'sum'     # the batch's per-example losses summed, as the official code does (or 'mean')
    dropout: float = 0.1
    max_length: int = 128
    validations_per_epoch: int = 1  # dev evaluations per epoch, evenly spaced, the last at its end (TUPE's: 2)
    run_score: str = 'last'         # a run's score: its 'last' evaluation (the paper) or its 'best' (TUPE's protocol,
    #                                 whose weights are then the run's: they predict the test set)

    def epochs_for(self, task):
        if self.large_task_epochs and task_by_name(task).name in LARGE_TASKS: return self.large_task_epochs
        return self.epochs or task_by_name(task).epochs


LARGE_TASKS = ('MNLI', 'QNLI', 'QQP')  # TUPE's protocol finetunes them for fewer epochs


def by_size(field):
    """A recipe field per size, for help texts: '0.0003 / 0.0001 / 5e-05 (small / base / large)'."""
    return f"{' / '.join(f'{r[field]:g}' for r in SIZE_RECIPES.values())} ({' / '.join(SIZE_RECIPES)})"


def recipe_for(size, **overrides):
    """The Recipe of a size with `overrides` (fields whose value is None are left at the size's default)."""
    values = dict(SIZE_RECIPES[size])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Recipe(**values)


def parse_rates(lrs):
    """--lrs '2e-5,3e-5' as numbers, sorted, without repeats ([] for ''; [-1.0] when unreadable, which the config
    refuses in one line)."""
    try: return sorted({float(lr) for lr in str(lrs).split(',') if lr.strip()})
    except ValueError: return [-1.0]


def recipes_for(size, rates=(), **overrides):
    """One Recipe per learning rate to try: one per rate of `rates` (a search, --lrs), else the one of
    `recipe_for(size, **overrides)` (its lr: `overrides['lr']`, or the size's)."""
    if not rates: return [recipe_for(size, **overrides)]
    return [recipe_for(size, **{**overrides, 'lr': lr}) for lr in rates]


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
    """The dev metrics `per_epoch` times an epoch, evenly spaced, the last at its end, each with the mean training
    loss since the one before; every row is handed to `on_epoch(row)` at once. Its 'epoch' is how far training has
    gone: 1, 2, ... (0.5, 1, 1.5, ... with two per epoch). Those within an epoch leave the random state as they
    found it, so that the epochs' ends are evaluated as with one evaluation per epoch. `keep_best`: the weights of
    the best evaluation so far (the earliest of equals) are kept in `best_state` (CPU), for TUPE's protocol, which
    scores a run by its best."""
    order = 80

    def __init__(self, task, dev, on_epoch, batch_size=128, precision='fp32', loss_reduction=Recipe.loss_reduction,
                 per_epoch=1, keep_best=False):
        self.task, self.dev, self.on_epoch = task_by_name(task), dev, on_epoch
        self.batch_size, self.precision, self.loss_reduction = batch_size, precision, loss_reduction
        self.per_epoch, self.keep_best = per_epoch, keep_best
        self.history, self.best_state = [], None

    def before_epoch(self):
        # the batches after which to evaluate (the epoch's end is the last): n_batches * j / per_epoch, rounded
        n_batches = len(self.learn.dls.train)
        self.at = {max(1, round(n_batches * j / self.per_epoch)): j for j in range(1, self.per_epoch)}
        self._start_interval()

    def _start_interval(self):
        self.loss_sum, self.n_examples, self.t0 = 0.0, 0, time.perf_counter()

    def after_batch(self):
        if not self.training: return
        n = len(self.learn.yb[0])
        # a tensor: no device sync per batch. Per example, whether the batch's losses were summed or averaged
        self.loss_sum += self.learn.loss.detach() * (1 if self.loss_reduction == 'sum' else n)
        self.n_examples += n
        j = self.at.get(self.iter + 1)
        if j is not None and self.iter + 1 < self.n_iter:  # the epoch's end has its own evaluation
            device = next(self.learn.model.parameters()).device
            # the random state as it was: the training goes on as without this evaluation (the dev DataLoader draws)
            with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
                self._evaluate(self.epoch + j / self.per_epoch)
            self._start_interval()

    def after_epoch(self):
        self._evaluate(self.epoch + 1)

    def _evaluate(self, epoch):
        metrics = evaluate(self.task, self.learn.model, self.dev, self.batch_size, self.precision)
        row = dict(epoch=epoch, step=self.learn.step,
                   train_loss=float(self.loss_sum) / max(1, self.n_examples), **metrics,
                   score=main_score(self.task, metrics), seconds=time.perf_counter() - self.t0)
        if self.keep_best and (not self.history or _better(row, best_row(self.history))):
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.learn.model.state_dict().items()}
        self.history.append(row)
        self.on_epoch(row)


def best_row(history):
    """The evaluation with the best score, the earliest of equals (a nan score never counts as best)."""
    best = history[0]
    for row in history[1:]:
        if _better(row, best): best = row
    return best


def _better(row, than):
    return row['score'] > than['score'] or (than['score'] != than['score'] and row['score'] == row['score'])


# ---------------------------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------------------------
def finetuning_optimizer(model, recipe, n_layers):
    """The recipe's Adam: by default the paper's (no bias correction, no weight decay, lr * decay^(n+2-depth) per
    layer: RECIPE.md); TUPE's preset: bias-corrected, betas (0.9, 0.98), weight decay 0.01, one lr for all layers."""
    return make_optimizer(model, lr=recipe.lr, weight_decay=recipe.weight_decay, eps=recipe.adam_eps,
                          betas=(0.9, recipe.adam_beta2), layer_lr_decay=recipe.layer_lr_decay, n_layers=n_layers,
                          fix_layer_decay=recipe.fix_layer_decay, bias_correction=recipe.bias_correction)


def finetuning_learner(model, train_dl, task, recipe, n_layers, epochs, precision='fp32',
                       device=torch.device('cpu'), extra_cbs=()):
    """A plain fastai Learner: batches (input_ids, attention_mask, token_type_ids, labels) give xb = the first
    three, yb = labels. Warmup is 10% of all steps, and the linear decay reaches 0 at the end of the last epoch."""
    model.to(device)
    opt = finetuning_optimizer(model, recipe, n_layers)
    total_steps = epochs * len(train_dl)
    return build_learner(model, train_dl, loss_for(task, recipe.loss_reduction), opt, lr=recipe.lr,
                         total_steps=total_steps, warmup_steps=int(recipe.warmup_fraction * total_steps),
                         clip=recipe.clip, precision=precision, device=device, extra_cbs=extra_cbs)


@dataclass
class RunResult:
    task: str
    run: int
    seed: int
    history: list            # one row per dev evaluation: epoch, step, train_loss, metrics, score, seconds
    state_dict: dict = None  # the finetuned weights (CPU), kept only for the best run of a task
    run_score: str = 'last'  # which evaluation is the run's (Recipe.run_score): the last, or the best

    @property
    def final(self): return self.history[-1]

    @property
    def chosen(self):
        """The evaluation that is the run's result: the last (the paper), or the best (TUPE's protocol)."""
        return best_row(self.history) if self.run_score == 'best' else self.final

    @property
    def score(self): return self.chosen['score']


def finetune_run(data, pretrained, recipe, seed, run=0, precision='fp32', device=torch.device('cpu'),
                 log_dir=None, loggers=('csv', 'tensorboard'), log_every=50, on_epoch=None, config=None):
    """Finetune a fresh copy of the pretrained body on one task with one seed; dev metrics after every epoch.

    The run's score is that of the model as it stands after the last epoch (no early stopping), as in the paper;
    with `recipe.run_score` 'best', that of its best dev evaluation, whose weights are then the run's (TUPE's).
    """
    task = data.task
    seed_everything(seed)  # head initialisation, dropout, batch order
    model = build_classifier(pretrained, task, recipe.dropout)
    train_dl = glue_dataloader(data.train, recipe.batch_size, shuffle=True, seed=seed,
                               pad_id=pretrained.tokenizer.pad_token_id)
    epochs = recipe.epochs_for(task)
    evaluation = DevEvaluation(task, data.dev, on_epoch or (lambda row: None), precision=precision,
                               loss_reduction=recipe.loss_reduction, per_epoch=recipe.validations_per_epoch,
                               keep_best=recipe.run_score == 'best')
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
    state = evaluation.best_state or {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return RunResult(task.name, run, seed, evaluation.history, state, recipe.run_score)


class DevMetricsToLoggers(Callback):
    """Sends each dev evaluation's metrics to the run's TensorBoard / Neptune (the CSV gets them via runs.csv)."""
    order = 90

    def __init__(self, metrics_logger, evaluation):
        self.metrics_logger, self.evaluation, self.sent = metrics_logger, evaluation, 0

    def after_batch(self): self._send()

    def after_epoch(self): self._send()

    def _send(self):
        for row in self.evaluation.history[self.sent:]:
            values = {'step': row['step'], **{f'dev_{k}': v for k, v in row.items() if k not in ('epoch', 'step')}}
            if hasattr(self.metrics_logger, 'backends'): self.metrics_logger.log(values, skip=('csv',))
        self.sent = len(self.evaluation.history)


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
