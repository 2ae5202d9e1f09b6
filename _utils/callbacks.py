"""fastai callbacks, one training concern each: step count, schedule, precision, clipping, checkpoints, stops, DDP.

They know nothing of ELECTRA's internals: the model's output and a metrics function are handed to them.
"""
import warnings
from pathlib import Path

import torch
from fastai.callback.core import (Callback, CancelBatchException, CancelFitException, CancelStepException,
                                  CancelValidException)
from fastai.callback.progress import ProgressCallback
from fastai.learner import AvgSmoothLoss

from .checkpoint import all_ranks_rng_state
from .errors import UserError
from .files import atomic_save
from .optim import linear_warmup_decay


class StepCounter(Callback):
    """Keeps `learn.step`: optimizer steps done, counting from `start_step` (non-zero when a run resumes)."""
    order = -10

    def __init__(self, start_step=0): self.start_step = start_step

    def before_fit(self): self.learn.step = self.start_step

    def after_batch(self):
        if self.training: self.learn.step += 1


class SmoothLossOnDevice(AvgSmoothLoss):
    """fastai's smoothed training loss, kept on the loss's device. (fastai's copies each step's loss to the CPU,
    which makes the CPU wait for the GPU at every step.)"""

    def accumulate(self, learn):
        self.count += 1
        loss = learn.loss.detach().float().mean()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class QuietRecorder(Callback):
    """Lets the CPU run ahead of the GPU: the Recorder smooths the loss on the device, and keeps only the newest
    `keep` values (not one per step of a million-step run)."""
    order = 55  # after Recorder.before_fit, which makes the lists

    def __init__(self, keep=10_000): self.keep = keep

    def before_fit(self):
        from collections import deque
        rec = self.learn.recorder
        rec.smooth_loss = SmoothLossOnDevice(beta=rec.smooth_loss.beta)
        rec.smooth_loss.reset()  # Recorder.before_fit reset the one it made; fastai < 2.8 starts none at count 0
        rec.lrs, rec.losses = deque(maxlen=self.keep), deque(maxlen=self.keep)


class StepProgress(ProgressCallback):
    """fastai's progress bar, showing the smoothed loss every `every` steps (fastai reads it back at each step)."""
    name = 'progress'  # takes ProgressCallback's place: learn.progress, learn.no_bar()

    def __init__(self, every=50): self.every = every

    def after_batch(self):
        self.pbar.update(self.iter + 1)
        if (self.iter + 1) % self.every == 0 and hasattr(self, 'smooth_loss'):
            self.pbar.comment = f'{self.smooth_loss.item():.4f}'


class SkipValidation(Callback):
    """Pretraining has no validation set: training is counted in steps, not epochs."""

    def before_validate(self): raise CancelValidException()


class WarmupLinearDecay(Callback):
    """lr(step) = lr * (1 - step/T) * min(1, step/warmup): warmup multiplies the decay, as the official optimizer."""
    order = 5

    def __init__(self, lr, total_steps, warmup_steps):
        self.lr, self.total_steps, self.warmup_steps = lr, total_steps, warmup_steps

    def before_batch(self):
        if not self.training: return
        for g in self.opt.opt.param_groups:
            g['lr'] = self.lr * linear_warmup_decay(self.learn.step, self.total_steps, self.warmup_steps)


def autocast_dtype(precision):
    return {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]


class Precision(Callback):
    """fp32, bf16 autocast (CPU and CUDA) or fp16 autocast with dynamic loss scaling (CUDA).

    With fp16 the gradients are unscaled *before* clipping, and a step whose gradients overflowed is skipped.
    """
    order = 10

    def __init__(self, precision='bf16', device_type='cpu'):
        self.precision, self.device_type = precision, device_type
        self.dtype = autocast_dtype(precision)
        self.scaler = None

    def before_fit(self):
        if self.precision == 'fp16':
            self.scaler = torch.amp.GradScaler(self.device_type)
        self.learn.scaler = self.scaler

    def before_batch(self):
        if self.dtype is not None:
            self.autocast = torch.autocast(self.device_type, dtype=self.dtype)
            self.autocast.__enter__()

    def after_loss(self):
        if self.dtype is not None: self.autocast.__exit__(None, None, None)

    def before_backward(self):
        if self.scaler is not None: self.learn.loss_grad = self.scaler.scale(self.loss_grad)

    def before_step(self):
        if self.scaler is None: return
        self.scaler.unscale_(self.opt.opt)           # true gradients, so that clipping sees real norms
        state = self.scaler._per_optimizer_states[id(self.opt.opt)]
        if sum(v.item() for v in state['found_inf_per_device'].values()):
            raise CancelStepException()              # overflow: skip this step, the scaler lowers its scale

    def after_step(self):
        if self.scaler is not None: self.scaler.update()

    def after_cancel_step(self): self.after_step()


class ClipGradNorm(Callback):
    """Global gradient-norm clipping at 1.0, on unscaled gradients (runs after `Precision.before_step`)."""
    order = 20

    def __init__(self, max_norm=1.0): self.max_norm = max_norm

    def before_step(self):
        self.learn.grad_norm = torch.nn.utils.clip_grad_norm_(self.learn.model.parameters(), self.max_norm)


def fraction_label(fraction):
    return f'{fraction * 100:g}pct'


class Checkpointer(Callback):
    """Saves `make_checkpoint(learn)` at fractions of the run, and a rolling checkpoint every `save_every` steps.

    Fraction checkpoints are named `{run_name}_seed{seed}_{pct}pct.pth` (e.g. `demo_seed0_6.25pct.pth`) and kept;
    rolling ones `{run_name}_seed{seed}_step{step}.pth`, of which the newest `keep_last` are kept. Only rank 0
    writes; every write goes to a temporary file first, so a kill during a save never harms an older checkpoint.
    """
    order = 60

    def __init__(self, directory, run_name, seed, total_steps, make_checkpoint,
                 fractions=(0.0625, 0.125, 0.25, 0.5, 1.0), rank=0, save_every=0, keep_last=2):
        self.directory, self.run_name, self.seed, self.total_steps = Path(directory), run_name, seed, total_steps
        self.make_checkpoint, self.rank, self.save_every, self.keep_last = make_checkpoint, rank, save_every, keep_last
        self.at = {max(1, round(f * total_steps)): f for f in sorted(fractions)}
        self.saved = []
        self.last_saved = None

    def path_for(self, fraction):
        return self.directory / f'{self.run_name}_seed{self.seed}_{fraction_label(fraction)}.pth'

    def rolling_path(self, step):
        return self.directory / f'{self.run_name}_seed{self.seed}_step{step}.pth'

    def after_batch(self):
        if not self.training: return
        step = self.learn.step
        if step in self.at: self.save(self.path_for(self.at[step]))
        if self.save_every and step % self.save_every == 0 and step not in self.at: self.save_rolling()

    def save(self, path):
        check = getattr(self.learn, 'check_finite', None)
        if check: check()                 # never write weights made from a non-finite loss
        rng_per_rank = all_ranks_rng_state()  # with several processes: every rank's random state (all take part)
        if self.rank == 0:
            ckpt = self.make_checkpoint(self.learn)
            if rng_per_rank is not None: ckpt['rng_per_rank'] = rng_per_rank
            try:
                self.last_saved = atomic_save(ckpt, path)
            except UserError as e:  # a full disk: the run stops here; nothing half-written, earlier checkpoints whole
                raise UserError(f'{e} (the run stopped at step {self.learn.step}; continue it with --resume latest)'
                                ) from None
            self.saved.append(self.last_saved)
        return path

    def save_rolling(self):
        path = self.save(self.rolling_path(self.learn.step))
        if self.rank == 0:
            rolling = sorted(self.directory.glob(f'{self.run_name}_seed{self.seed}_step*.pth'),
                             key=lambda p: int(p.stem.rsplit('step', 1)[1]))
            for old in rolling[:-self.keep_last] if self.keep_last > 0 else []: old.unlink()
        return path


class GracefulStop(Callback):
    """Ctrl-C or SIGTERM: finish the current step, save a checkpoint, stop, and say how to resume.

    A second Ctrl-C stops at once (the last checkpoint on disk stays intact).
    """
    order = 65

    def __init__(self, checkpointer, world_size=1, agree_every=10):
        self.checkpointer, self.world_size, self.agree_every = checkpointer, world_size, agree_every

    def before_fit(self):
        import signal
        import threading
        self.signal_name, self.previous = None, {}
        if threading.current_thread() is not threading.main_thread(): return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._request_stop)

    def _request_stop(self, signum, frame):
        import signal
        if self.signal_name is not None:                  # second signal: stop now
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def after_batch(self):
        if not self.training or not self.stop_now(): return
        path = self.checkpointer.save_rolling()
        self.learn.stop_reason = (f'{self.signal_name} at step {self.learn.step}: saved {path}\n'
                                  f'Resume with: python pretrain.py --resume {path}')
        raise CancelFitException()

    def stop_now(self):
        """One process: at once. Several: every `agree_every` steps the ranks agree (any rank signalled -> all
        stop at the same step), since a rank that stopped alone would leave the others waiting for it."""
        if self.world_size == 1: return self.signal_name is not None
        if self.learn.step % self.agree_every: return False
        import torch.distributed as dist
        flag = torch.tensor([float(self.signal_name is not None)], device=next(self.learn.model.parameters()).device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal_name is None: self.signal_name = 'a signal to another process'
        return bool(flag.item())

    def after_fit(self):
        import signal
        for sig, handler in self.previous.items(): signal.signal(sig, handler)


class NonFiniteLoss(Callback):
    """Stops the run at the first non-finite loss, naming the step (or skips such steps when `skip=True`).

    On a CPU each step's loss is checked at once. On a GPU, reading a value back waits for the GPU to finish,
    so the check of step k's loss is made during step k+1 (the GPU is still busy with step k+1 meanwhile): a
    non-finite loss stops the run one step later, and every checkpoint save checks first (`learn.check_finite`),
    so bad weights are never written. `skip=True` must decide before the update, so it checks at once everywhere.
    With several processes the global gradient norm is checked instead of the loss: after DDP's averaging it is
    the same number on every rank, so all ranks stop (or skip) together, where a rank stopping alone would hang.
    """
    order = 25   # after_loss: after Precision's; before_step: after ClipGradNorm's, which computes learn.grad_norm

    def __init__(self, skip=False, deferred=None, world_size=1):
        self.skip, self.skipped, self.world_size = skip, 0, world_size
        self.deferred = deferred   # None: deferred on CUDA (unless skip), at once elsewhere

    def before_fit(self):
        self.pending = None                        # (step, value) whose check is deferred
        self.learn.check_finite = self.check_pending

    def after_loss(self):
        if self.training and self.world_size == 1: self.check(self.learn.loss.detach(), 'loss')

    def before_step(self):
        if self.training and self.world_size > 1 and getattr(self.learn, 'grad_norm', None) is not None:
            self.check(self.learn.grad_norm.detach(), 'gradient norm')

    def check(self, value, what):
        step = self.learn.step + 1
        if (value.is_cuda if self.deferred is None else self.deferred) and not self.skip:
            self.check_pending()                   # the previous step's value, which the GPU has (nearly) finished
            self.pending = (step, value, what)
            return
        if bool(torch.isfinite(value)): return
        if self.skip:
            self.skipped += 1
            warnings.warn(f'non-finite {what} at step {step}: step skipped ({self.skipped} so far)')
            raise CancelBatchException() if what == 'loss' else CancelStepException()
        self.stop(step, value, what, applied=False)

    def check_pending(self):
        if self.pending is None: return
        (step, value, what), self.pending = self.pending, None
        if not bool(torch.isfinite(value)): self.stop(step, value, what, applied=True)

    def after_epoch(self): self.check_pending()

    def stop(self, step, value, what, applied):
        done = (f'its update was made in memory but nothing after step {step - 1} was saved' if applied
                else 'stopped without updating the weights')
        self.learn.stop_reason = (f'the {what} became {float(value)} at step {step}; {done}. The last checkpoint on '
                                  'disk is intact. Try a lower --lr, --precision fp32, or --skip_nonfinite to skip '
                                  'such steps')
        raise CancelFitException()


class DataParallel(Callback):
    """Data-parallel training across processes started by `torchrun` or `accelerate launch` (PyTorch DDP).

    Wraps the model in DistributedDataParallel for the fit: gradients are averaged across ranks during backward,
    so every rank takes the same optimizer step and the weights stay identical. Each rank reads its own slice of
    every global batch (see text.StepBatches), so the global batch and the schedule stay the recipe's.
    """
    order = -5

    def __init__(self, device_ids=None): self.device_ids = device_ids

    def before_fit(self):
        from torch.nn.parallel import DistributedDataParallel
        self.inner = self.learn.model
        self.learn.model = DistributedDataParallel(self.inner, device_ids=self.device_ids)

    def after_fit(self): self.learn.model = self.inner
