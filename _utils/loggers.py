"""Where the numbers of a run go: every few steps to CSV, TensorBoard and (optionally) Neptune. A logger that fails
is reported once and dropped; training never stops for it."""
import csv
import math
import os
import time
import warnings
from pathlib import Path

import torch
from fastai.callback.core import Callback

from .errors import UserError


class MetricsLogger(Callback):
    """Every `every` steps: losses, metrics, lr and tokens/s to CSV, TensorBoard and (optionally) Neptune.

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


_BACKENDS = {'csv': _CSV, 'tensorboard': _TensorBoard, 'neptune': _Neptune}


LOGGERS = tuple(_BACKENDS)


def parse_loggers(spec):
    """--logger 'csv,tensorboard' -> ['csv', 'tensorboard'], 'none' -> []; an unknown name is a one-line error."""
    names = [] if spec == 'none' else [n.strip() for n in spec.split(',') if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"--logger: unknown logger '{name}'; choose among {', '.join(LOGGERS)} or none")
    return names
