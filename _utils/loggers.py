"""Where the numbers of a run go: every few steps to CSV, TensorBoard and (optionally) Neptune or MLflow. A logger
that fails is reported once and dropped; training never stops for it."""
import csv
import math
import os
import re
import time
import warnings
from pathlib import Path

import torch
from fastai.callback.core import Callback

from .errors import UserError


class MetricsLogger(Callback):
    """Every `every` steps: losses, metrics, lr and tokens/s to CSV, TensorBoard and (optionally) Neptune, MLflow.

    `metrics_fn(pred) -> {name: 0-d tensor}` runs every step and is averaged over the steps since the last log
    (summed on the device: no host-device synchronisation between logs); `snapshot_fn(pred) -> {name: float}`
    runs on logged steps only (e.g. an AUC of the last batch). A failing backend is reported once and dropped;
    training goes on.
    """
    order = 70

    def __init__(self, log_dir, metrics_fn, every=50, loggers=('csv', 'tensorboard'), tokens_per_step=None,
                 run_name='run', config=None, total_steps=None, rank=0, snapshot_fn=None):
        self.log_dir, self.metrics_fn, self.every, self.total_steps = Path(log_dir), metrics_fn, every, total_steps
        self.loggers, self.tokens_per_step, self.run_name, self.config = list(loggers), tokens_per_step, run_name, config
        self.rank, self.snapshot_fn = rank, snapshot_fn
        self.history = []

    def before_fit(self):
        self.backends, self.sums, self.count = {}, None, 0
        if self.rank != 0: return
        try: self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            warnings.warn(f'cannot create the log folder {self.log_dir} ({e}); logging is off, training goes on')
            self.loggers = []
        for name in self.loggers:
            try: self.backends[name] = _BACKENDS[name](self.log_dir, self.run_name, self.config, self.learn.step > 0)
            except Exception as e: warnings.warn(f'logger {name} disabled: {e}')
        self.t0, self.step0 = time.perf_counter(), self.learn.step
        self.first_step = self.learn.step + 1

    def after_batch(self):
        if not self.training or self.rank != 0 or getattr(self.learn, 'loss_grad', None) is None: return
        metrics = {**self.metrics_fn(self.learn.pred), 'loss': self.learn.loss.detach()}
        values = torch.stack([v.detach().float() for v in metrics.values()])
        self.sums = values if self.sums is None else self.sums + values
        self.count += 1
        step = self.learn.step
        if step % self.every and step != self.total_steps and step != self.first_step: return
        now = time.perf_counter()
        row = {'step': step, **dict(zip(metrics, (self.sums / self.count).tolist()))}
        self.sums, self.count = None, 0
        if self.snapshot_fn: row.update(self.snapshot_fn(self.learn.pred))
        row['lr'] = self.opt.opt.param_groups[0]['lr']        # the scheduled lr (before any layer-wise scale)
        if self.tokens_per_step:
            row['tokens_per_s'] = self.tokens_per_step * (step - self.step0) / max(now - self.t0, 1e-9)
        self.t0, self.step0 = now, step
        self.history.append(row)
        self.log(row)

    def log(self, row, skip=()):
        """`row` to every backend (but those in `skip`); one that fails is reported once and dropped."""
        for name, backend in list(self.backends.items()):
            if name in skip: continue
            try: backend.log(row)
            except Exception as e:  # a logging failure never stops training
                warnings.warn(f'logger {name} failed and is disabled ({e}); training goes on')
                self.backends.pop(name)

    def after_fit(self):
        for backend in self.backends.values():
            try: backend.close()
            except Exception: pass


class _CSV:
    def __init__(self, log_dir, run_name, config, resuming=False):
        self.path = Path(log_dir) / 'metrics.csv'
        self.file, self.writer, self.resuming = None, None, resuming

    def log(self, row):
        if self.writer is None:
            append = self.resuming and self.path.exists() and self.path.stat().st_size > 0
            self.file = self.path.open('a' if append else 'w', newline='')
            self.writer = csv.DictWriter(self.file, fieldnames=list(row), extrasaction='ignore')
            if not append: self.writer.writeheader()
        self.writer.writerow({k: (f'{v:.9g}' if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()

    def close(self):
        if self.file: self.file.close()


class _TensorBoard:
    def __init__(self, log_dir, run_name, config, resuming=False):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir))
        if config: self.writer.add_text('config', '\n'.join(f'    {k}: {v}' for k, v in config.items()))

    def log(self, row):
        for k, v in row.items():
            if k != 'step' and isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, row['step'])

    def close(self): self.writer.close()


class _Neptune:
    """Neptune 1.x. Its hosted service closed in 2026: by default it runs in offline mode (NEPTUNE_MODE=offline),
    writing to .neptune/ (a self-hosted server can be used by setting NEPTUNE_MODE=async and the project/token)."""

    def __init__(self, log_dir, run_name, config, resuming=False):
        import neptune
        mode = os.environ.get('NEPTUNE_MODE', 'offline')
        self.run = neptune.init_run(mode=mode, name=run_name, project=os.environ.get('NEPTUNE_PROJECT'))
        if config: self.run['config'] = {k: str(v) for k, v in config.items()}

    def log(self, row):
        for k, v in row.items():
            if k != 'step': self.run[f'train/{k}'].append(v, step=row['step'])

    def close(self): self.run.stop()


class _MLflow:
    """MLflow (`pip install mlflow`, or `mlflow-skinny` to log only) through an `MlflowClient` with an explicit run
    id: the fluent API keeps one global active run, which two loggers in one process would share.

    The store is MLFLOW_TRACKING_URI when set (a server, a database...), else a local folder that needs no server:
    `mlruns/` beside the folder given as --log_dir, so that pretraining runs (<log_dir>/<run>) and finetuning runs
    (<log_dir>/<group>/<task>_run<i>_seed<s>) share one store, `logs/mlruns`. The experiment is named after that
    folder (electra-pretrain, electra-finetune), the MLflow run after the run. The local store is MLflow's file store:
    MLflow 3 refuses it unless MLFLOW_ALLOW_FILE_STORE=true, so that is set for this process (unless set otherwise);
    its database store (sqlite:///...) needs SQLAlchemy, which mlflow-skinny lacks. A resumed run is logged as a new
    MLflow run with the same name, tagged resumed, from the step it resumed at.
    """

    def __init__(self, log_dir, run_name, config, resuming=False):
        try: import mlflow  # noqa: F401 (the package itself: its submodules may be imported already)
        except ImportError as e:
            raise ImportError(f'mlflow cannot be imported ({e}): pip install mlflow (the full package, with '
                              '`mlflow ui`) or pip install mlflow-skinny (logging only)') from None
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.tracking import MlflowClient
        self.Metric, self.finished = Metric, RunStatus.to_string(RunStatus.FINISHED)
        uri = os.environ.get('MLFLOW_TRACKING_URI')
        store, experiment = _mlflow_home(log_dir)
        if not uri:
            os.environ.setdefault('MLFLOW_ALLOW_FILE_STORE', 'true')
            uri = store.as_uri()
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        tags = {'log_dir': str(log_dir), **({'resumed': 'true'} if resuming else {})}
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        params = [Param(k, _shorten(str(v), 500)) for k, v in (config or {}).items()]
        for i in range(0, len(params), 100):  # at most 100 params per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, row):
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, float(v), now, row['step']) for k, v in row.items()
                   if k != 'step' and isinstance(v, (int, float)) and math.isfinite(v)]
        if metrics: self.client.log_batch(self.run_id, metrics=metrics)

    def close(self): self.client.set_terminated(self.run_id, self.finished)


def _mlflow_home(log_dir):
    """(local store, experiment name) of a run's log folder: `logs/mlruns` and electra-pretrain for
    logs/pretrain/<run>; `logs/mlruns` and electra-finetune for logs/finetune/<group>/<task>_run<i>_seed<s>."""
    run = Path(log_dir).resolve()
    finetuning = run.parent.name != 'pretrain' and re.search(r'_run\d+_seed\d+$', run.name)
    root = run.parents[1] if finetuning else run.parent  # the folder given as --log_dir
    return root.parent / 'mlruns', f'electra-{root.name}'


def _shorten(text, limit): return text if len(text) <= limit else text[:limit - 3] + '...'


_BACKENDS = {'csv': _CSV, 'tensorboard': _TensorBoard, 'neptune': _Neptune, 'mlflow': _MLflow}


LOGGERS = tuple(_BACKENDS)


def parse_loggers(spec):
    """--logger 'csv,tensorboard' -> ['csv', 'tensorboard'], 'none' -> []; an unknown name is a one-line error."""
    names = [] if spec == 'none' else [n.strip() for n in spec.split(',') if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"--logger: unknown logger '{name}'; choose among {', '.join(LOGGERS)} or none")
    return names
