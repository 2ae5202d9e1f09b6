"""Putting a pretraining run together: device and precision choice, the data loader, the ELECTRA model, the Learner."""
import contextlib
import os
import random

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner

from .callbacks import (ClipGradNorm, DataParallel, Precision, QuietRecorder, SkipValidation, StepCounter,
                        StepProgress, WarmupLinearDecay)
from .electra import ELECTRA, ElectraLoss, build_models, max_predictions_for, step_metrics
from .errors import UserError
from .optim import make_optimizer
from .text import Batches, StepBatches


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


def keep_freed_memory():
    """On Linux with glibc, keep freed memory in the process instead of giving it back to the OS.

    glibc serves every block above 32 MB (a batch's generator logits, 74 MB at Small b32) with a fresh mmap, so
    each step faults in its pages again, and the kernel zeroes them. On the 2-core test machine that cost 5-20% of
    a CPU training step. After this, freed blocks are reused; the process keeps its peak memory. Returns whether it
    took effect (not on other platforms or C libraries).
    """
    import ctypes
    import sys
    if not sys.platform.startswith('linux'): return False
    try: libc = ctypes.CDLL('libc.so.6')
    except OSError: return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                                          # from glibc's malloc.h
    mallopt = getattr(libc, 'mallopt', None)
    return bool(mallopt and mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def pick_precision(precision, device):
    """'auto': bf16 where the hardware runs it fast (Ampere+ GPUs, CPUs with AMX / AVX512-BF16), else fp16 on
    older GPUs and fp32 on other CPUs."""
    if precision == 'auto':
        if device.type == 'cuda': return 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
        return 'bf16' if cpu_has_fast_bf16() else 'fp32'
    if precision == 'fp16' and device.type != 'cuda':
        raise UserError('--precision fp16 needs a CUDA GPU (loss scaling); use bf16 or fp32 on the CPU')
    return precision


def build_electra(size, tokenizer, mask_prob=0.15, max_length=128, attn_implementation='sdpa'):
    vocab_size = len(tokenizer)
    generator, discriminator = build_models(size, vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id,
                                            attn_implementation=attn_implementation)
    if max_length > discriminator.config.max_position_embeddings:
        raise UserError(f'--max_length {max_length} exceeds the model\'s {discriminator.config.max_position_embeddings}'
                        ' positions; use at most that')
    specials = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id]
    return ELECTRA(generator, discriminator, mask_token_id=tokenizer.mask_token_id, special_token_ids=specials,
                   pad_token_id=tokenizer.pad_token_id, mask_prob=mask_prob,
                   max_predictions=max_predictions_for(max_length, mask_prob))


def step_dataloader(examples, batch_size, max_steps, seed, start_step=0, rank=0, world_size=1, num_workers=0):
    sampler = StepBatches(len(examples), batch_size, max_steps, seed=seed, start_step=start_step, rank=rank,
                          world_size=world_size)
    # Its own generator: starting an iterator must not draw from the global RNG, or a resumed run would diverge
    return torch.utils.data.DataLoader(Batches(examples), sampler=sampler, batch_size=None, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


class OnDevice:
    """A loader whose batches are copied to `device` without making the CPU wait (pinned memory, non_blocking):
    the copy is queued behind the running step, so the CPU goes on preparing the next one."""

    def __init__(self, dl, device): self.dl, self.device = dl, device

    def __len__(self): return len(self.dl)

    def __iter__(self):
        if self.device.type != 'cuda': yield from self.dl; return
        for batch in self.dl: yield tuple(t.to(self.device, non_blocking=True) for t in batch)


COMPILE_MODES = ('auto', 'none', 'default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune')


def pick_compile(mode, device, world_size=1):
    """'auto': on one CUDA GPU 'reduce-overhead' (compiled kernels replayed as CUDA graphs: ELECTRA-Small's
    kernels are so short that launching them one by one costs more than running them); with several GPUs
    'default' (DDP's gradient hooks don't go into CUDA graphs); on CPUs none (compiling takes a minute or more
    there, and the compiled step measured no faster: bench/RESULTS.md)."""
    if mode == 'auto':
        if device.type != 'cuda': return 'none'
        return 'reduce-overhead' if world_size == 1 else 'default'
    return mode


class Compiled:
    """The step's three pieces compiled with `torch.compile(mode=...)`: the ELECTRA forward (masking, generator,
    sampling, discriminator), the loss and the logged metrics. Compilation happens at the first step; an error
    there falls back to eager execution with a warning (torch._dynamo's `suppress_errors`), so a run never dies
    of it. With a cudagraphs mode, each step is marked as a new CUDA graph replay."""

    def __init__(self, mode): self.mode = mode

    def __call__(self, electra, loss_func, metrics_fn):
        import torch._dynamo
        torch._dynamo.config.suppress_errors = True
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
        electra.compile(mode=self.mode)
        return torch.compile(loss_func, mode=self.mode), torch.compile(metrics_fn, mode=self.mode)

    @property
    def cudagraphs(self): return self.mode in ('reduce-overhead', 'max-autotune')


def last_batch_auc(out):
    """The discriminator's ROC AUC over the real tokens of the last batch (computed on logged steps only)."""
    from sklearn.metrics import roc_auc_score
    real = out.attention_mask.bool()
    labels = out.is_replaced[real].cpu().numpy()
    scores = out.disc_logits[real].float().detach().cpu().numpy()
    return {'disc_auc': float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float('nan')}


def pretraining_learner(electra, train_dl, *, lr, total_steps, warmup_steps, weight_decay=0.01, adam_eps=1e-6,
                        adam_betas=(0.9, 0.999), clip=1.0, precision='bf16', device=torch.device('cpu'),
                        generator_weight=1.0, discriminator_weight=50.0, start_step=0, extra_cbs=(), rank=0,
                        world_size=1, compile='none', metrics=None, progress_every=50):
    """A plain fastai Learner over the ELECTRA module, trained for `total_steps` optimizer steps (one 'epoch').

    `compile`: a torch.compile mode or 'none' (see `Compiled`); it also compiles `metrics` (a MetricsLogger's
    function). With `world_size` > 1 (torchrun), the model is wrapped in DDP for the fit and only rank 0 shows
    progress. Nothing in the step reads a value back from the GPU, so the CPU queues work ahead of it.
    """
    electra.to(device)
    if device.type == 'cpu': keep_freed_memory()
    opt = make_optimizer(electra, lr=lr, weight_decay=weight_decay, betas=adam_betas, eps=adam_eps)
    from fastai.callback.progress import ProgressCallback
    from fastai.optimizer import OptimWrapper
    loss_func = ElectraLoss(generator_weight, discriminator_weight)
    compiled = Compiled(compile) if compile != 'none' else None
    if compiled:
        loss_func, compiled_metrics = compiled(electra, loss_func, metrics.metrics_fn if metrics else step_metrics)
        if metrics: metrics.metrics_fn = compiled_metrics
    cbs = [StepCounter(start_step), SkipValidation(), WarmupLinearDecay(lr, total_steps, warmup_steps),
           Precision(precision, device.type), ClipGradNorm(clip), QuietRecorder(), *extra_cbs]
    if compiled and compiled.cudagraphs: cbs.append(CudaGraphSteps())
    if world_size > 1: cbs.append(DataParallel([device.index] if device.type == 'cuda' else None))
    learn = Learner(DataLoaders(OnDevice(train_dl, device), []), electra, loss_func=loss_func,
                    opt_func=lambda params, lr: OptimWrapper(opt=opt), lr=lr, cbs=cbs, wd_bn_bias=True,
                    train_bn=False)
    learn.remove_cb(ProgressCallback)
    if rank == 0: learn.add_cb(StepProgress(progress_every))
    else: learn.logger = lambda *args: None
    learn.recorder.valid_metrics = False
    learn.total_steps = total_steps
    return learn


class CudaGraphSteps(Callback):
    """Marks the start of each step for CUDA graph replay (torch.compile's cudagraphs modes)."""

    def before_batch(self): torch.compiler.cudagraph_mark_step_begin()


# ---------------------------------------------------------------------------------------------------------------
# Looking at what happens (used by the notebook)
# ---------------------------------------------------------------------------------------------------------------
def describe_example(example, tokenizer):
    """A packed example as text, one segment per line."""
    ids, types = example['input_ids'].tolist(), example['token_type_ids'].tolist()
    n = sum(1 for i in ids if i != tokenizer.pad_token_id)
    a = [t for t, s in zip(ids[:n], types[:n]) if s == 0]
    b = [t for t, s in zip(ids[:n], types[:n]) if s == 1]
    print(f'{n} real tokens + {len(ids) - n} padding; segment A {len(a)} tokens (with [CLS] and [SEP]), '
          f'segment B {len(b)} tokens')
    print('A:', tokenizer.decode(a))
    print('B:', tokenizer.decode(b) if b else '(single-segment example)')


@torch.no_grad()
def peek_step(electra, batch, tokenizer, row=0, max_rows=40):
    """One step on `batch`, shown for one row: the original token, what the generator saw, what the
    discriminator saw, the label and the discriminator's P(replaced). Masked positions and the first tokens."""
    import pandas as pd
    device = next(electra.parameters()).device
    ids, types = batch['input_ids'].long().to(device), batch['token_type_ids'].long().to(device)
    was_training = electra.training
    electra.eval()
    out = electra(ids, types)
    electra.train(was_training)
    n = int(out.attention_mask[row].sum())
    masked = torch.zeros(ids.size(1), dtype=torch.bool)
    masked[out.masked_positions[row][out.masked_weight[row] > 0].cpu()] = True
    tokens = lambda t: tokenizer.convert_ids_to_tokens(t[row, :n].tolist())
    table = pd.DataFrame({'original': tokens(ids), 'discriminator sees': tokens(out.disc_input),
                          'masked': masked[:n].tolist(), 'replaced (label)': out.is_replaced[row, :n].tolist(),
                          'P(replaced)': torch.sigmoid(out.disc_logits[row, :n].float()).cpu().round(decimals=3)})
    return table[table.masked | (table.index < 8)].head(max_rows)


def plot_schedule(lr, total_steps, warmup_steps, ax=None):
    import matplotlib.pyplot as plt
    from .optim import linear_warmup_decay
    steps = np.linspace(0, total_steps, 500)
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    ax.plot(steps, [lr * linear_warmup_decay(s, total_steps, warmup_steps) for s in steps])
    ax.set(xlabel='step', ylabel='learning rate', title=f'warmup {warmup_steps:,} x linear decay over {total_steps:,}')
    return ax


def learning_summary(history):
    """Did it learn? MLM loss fall, discriminator loss against the majority-class baseline."""
    if len(history) < 2: return 'Too few logged steps to judge learning.'
    first, last = history[0], history[-1]
    from .electra import binary_entropy
    baseline = binary_entropy(last['replaced_rate'])
    drop = 1 - last['mlm_loss'] / first['mlm_loss']
    return (f"Generator MLM loss {first['mlm_loss']:.3f} (step {first['step']}) -> {last['mlm_loss']:.3f} "
            f"(step {last['step']}): {drop:.0%} lower\n"
            f"Discriminator loss {last['disc_loss']:.4f} vs majority-class baseline {baseline:.4f} "
            f"(replaced rate {last['replaced_rate']:.3f}): {'below' if last['disc_loss'] < baseline else 'not below'}"
            f"; AUC {last.get('disc_auc', float('nan')):.3f}")


def plot_history(history):
    import matplotlib.pyplot as plt
    import pandas as pd
    from .electra import binary_entropy
    df = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    df.plot(x='step', y='mlm_loss', ax=axes[0], title='generator MLM loss')
    # below 0: better than always guessing "original" (the plateau every run starts on)
    axes[1].plot(df.step, df.disc_loss - [binary_entropy(r) for r in df.replaced_rate], label='disc_loss - baseline')
    axes[1].axhline(0, ls='--', c='grey')
    axes[1].set(title='discriminator loss minus the majority-class baseline', xlabel='step', ylim=(-0.03, 0.03))
    axes[1].legend()
    df.plot(x='step', y=['disc_auc', 'gen_acc', 'disc_precision', 'disc_recall'], ax=axes[2], title='accuracy, AUC')
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Several processes (torchrun / accelerate launch)
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def rank_zero_first(rank, world_size):
    """Rank 0 runs the block first, the other ranks after it: rank 0 builds the data cache once, the others read it
    (all of them building it at once would race on the same folder)."""
    import torch.distributed as dist
    if world_size > 1 and rank != 0: dist.barrier()
    yield
    if world_size > 1 and rank == 0: dist.barrier()


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
        dist.init_process_group('nccl' if device is not None else 'gloo')
    return rank, world_size, device
