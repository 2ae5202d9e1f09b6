"""Where and how a model trains: seeding, the device, the precision, several processes, and the one fastai Learner
that pretraining and finetuning both build (the loop, its callbacks and the optimizer they are given)."""
import atexit
import contextlib
import datetime
import os
import random
from pathlib import Path

import numpy as np
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import OptimWrapper

from .callbacks import ClipGradNorm, Precision, QuietRecorder, SkipValidation, StepCounter, WarmupLinearDecay
from .errors import UserError
from .speedups import keep_freed_memory


def seed_everything(seed):
    random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)


def seed_masking(seed, rank=0, world_size=1):
    """After the (identical) initialisation, give each process its own masking / sampling random stream."""
    if world_size > 1: seed_everything(seed + 1_000_003 * rank)


def pick_device(device='auto'):
    if device == 'auto': return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def cpu_has_fast_bf16():
    try: return bool(torch.cpu._is_amx_tile_supported() or torch.backends.mkldnn.is_available() and
                     torch.cpu._is_avx512_bf16_supported())
    except AttributeError: return False


def pick_precision(precision, device):
    """'auto': bf16 where the hardware runs it fast (Ampere+ GPUs, CPUs with AMX / AVX512-BF16), else fp16 on
    older GPUs and fp32 on other CPUs."""
    if precision == 'auto':
        if device.type == 'cuda': return 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
        return 'bf16' if cpu_has_fast_bf16() else 'fp32'
    if precision == 'fp16' and device.type != 'cuda':
        raise UserError('--precision fp16 needs a CUDA GPU (loss scaling); use bf16 or fp32 on the CPU')
    return precision


class OnDevice:
    """A loader whose batches are copied to `device` without making the CPU wait (pinned memory, non_blocking):
    the copy is queued behind the running step, so the CPU goes on preparing the next one."""

    def __init__(self, dl, device): self.dl, self.device = dl, device

    def __len__(self): return len(self.dl)

    def __iter__(self):
        if self.device.type != 'cuda': yield from self.dl; return
        for batch in self.dl: yield tuple(t.to(self.device, non_blocking=True) for t in batch)


@contextlib.contextmanager
def one_process_at_a_time(lock_file, world_size):
    """The processes of one run go through the block in turn (a file lock): the first builds the data cache, the
    others find it built. A lock rather than a barrier, so that the cache is built before the process group starts:
    forking tokenizer workers in a process already running gloo's threads crashed a rank now and then."""
    if world_size == 1:
        yield
        return
    from filelock import FileLock
    Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_file)):
        yield


def process_rank():
    """(rank, world_size) as torchrun / accelerate set them; (0, 1) for one process. Readable before the process
    group starts (`init_distributed`)."""
    return int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))


def init_distributed():
    """(rank, world_size, device) from the variables torchrun / accelerate set; one process: (0, 1, None).

    Starts the process group (NCCL on GPUs, gloo on CPUs) and picks this process's GPU.
    """
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    if world_size == 1: return 0, 1, None
    import torch.distributed as dist
    rank, local_rank = int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', 0))
    device = None
    if torch.cuda.is_available():
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = 'nccl' if device is not None else 'gloo'
        store = _restart_store(world_size)
        if store is None: dist.init_process_group(backend)
        else: dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
        atexit.register(_leave_process_group)
    return rank, world_size, device


def _restart_store(world_size):
    """Processes that torchrun restarted (`--max-restarts`) meet in a corner of torchrun's store of their own (None
    at a first start, or outside torchrun). The store still holds the addresses the processes of the attempt before
    published there: a process that read one before its new owner overwrote it connected to a dead process (torch
    2.14, gloo: 'Connection refused', or a hang)."""
    import torch.distributed as dist
    restarts = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0))
    if not restarts or os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True': return None
    store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), world_size, is_master=False,
                          timeout=datetime.timedelta(minutes=30))
    return dist.PrefixStore(f'restart{restarts}/', store)


def _leave_process_group():
    """At exit, stop the process group's threads while Python still runs: left to the C++ destructors, gloo's
    threads were destroyed still running now and then, and the rank died with SIGABRT ("terminate called without an
    active exception") after its work was done."""
    import torch.distributed as dist
    if dist.is_initialized(): dist.destroy_process_group()


def build_learner(model, train_dl, loss_func, opt, *, lr, total_steps, warmup_steps, clip, precision, device,
                  start_step=0, extra_cbs=()):
    """The plain fastai Learner of both trainings: `train_dl` once through (no validation loop), the optimizer `opt`
    the caller built, and the recipe's callbacks: the step count, warmup × linear decay of `lr` over
    `total_steps`, the precision, clipping at `clip`, then `extra_cbs`. The model must be on `device` already.

    Nothing in a step waits for the GPU: batches are copied without blocking, and the loss stays on the device.
    The lr reaches the optimizer through the schedule callback, which sets it before every step (the optimizer's
    and the Learner's own lr are the same value, overwritten there).
    """
    if device.type == 'cpu': keep_freed_memory()
    cbs = [StepCounter(start_step), SkipValidation(), WarmupLinearDecay(lr, total_steps, warmup_steps),
           Precision(precision, device.type), ClipGradNorm(clip), QuietRecorder(), *extra_cbs]
    learn = Learner(DataLoaders(OnDevice(train_dl, device), []), model, loss_func=loss_func,
                    opt_func=lambda params, lr: OptimWrapper(opt=opt), lr=lr, cbs=cbs, wd_bn_bias=True,
                    train_bn=False)
    learn.recorder.valid_metrics = False
    learn.total_steps = total_steps
    return learn
