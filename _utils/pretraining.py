"""A pretraining run: the ELECTRA model at a size, batches for a number of steps, compilation, its Learner, and
whether it learned."""
import logging
import warnings

import torch
from fastai.callback.core import Callback

from .callbacks import DataParallel, StepProgress
from .electra import (ELECTRA, MASK_PROB, ElectraLoss, build_models, count_parameters, max_predictions_for,
                      pair_from_function, step_metrics)
from .errors import UserError, first_line
from .learner import build_learner
from .objectives import DEFAULT_OBJECTIVE
from .optim import make_optimizer
from .positions import position_of
from .text import Batches, StepBatches


def build_electra(size, tokenizer, mask_prob=MASK_PROB, max_length=128, attn_implementation='sdpa',
                  objective=DEFAULT_OBJECTIVE, position='absolute', pair='', init_from=None, dropout=0.1):
    """The ELECTRA step around a generator and a discriminator: Hugging Face ELECTRA models at `size` (the
    default), your own from `pair` ('file.py:function', see `electra.pair_from_function`), or `init_from`, a
    (generator, discriminator) pair already loaded (`checkpoint.import_huggingface`)."""
    vocab_size = len(tokenizer)
    if (pair or init_from is not None) and (objective != DEFAULT_OBJECTIVE or position != 'absolute'):
        raise UserError(f"{'--pair' if pair else '--init_from'} trains the models as they are with the electra "
                        'objective; drop --objective / --position')
    if pair:
        generator, discriminator = pair_from_function(pair, vocab_size, max_length)
    elif init_from is not None:
        generator, discriminator = init_from
        if discriminator.config.vocab_size != vocab_size:
            raise UserError(f'--init_from: the models have {discriminator.config.vocab_size:,} tokens, the tokenizer '
                            f'{vocab_size:,}; use the tokenizer saved with the models')
    else:
        generator, discriminator = build_models(size, vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id,
                                                attn_implementation=attn_implementation, objective=objective,
                                                position=position, dropout=dropout)
    positions = getattr(getattr(discriminator, 'config', None), 'max_position_embeddings', max_length)
    if max_length > positions:
        raise UserError(f"--max_length {max_length} exceeds the model's {positions} positions; use at most that")
    specials = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, tokenizer.pad_token_id]
    electra = ELECTRA(generator, discriminator, mask_token_id=tokenizer.mask_token_id, special_token_ids=specials,
                      pad_token_id=tokenizer.pad_token_id, mask_prob=mask_prob,
                      max_predictions=max_predictions_for(max_length, mask_prob), objective=objective)
    electra.pair = pair or None  # recorded in checkpoints, which rebuild the pair with it
    return electra


def describe_models(electra, size):
    """One line: the objective and the parameters of each network."""
    disc, gen = electra.discriminator, electra.generator
    if getattr(electra, 'pair', None):
        return (f'your own pair ({electra.pair}): discriminator {count_parameters(disc) / 1e6:.2f}M parameters, '
                f'generator {count_parameters(gen) / 1e6:.2f}M')
    spec = electra.spec  # the objective's entry
    line = (f'ELECTRA-{size}, objective {electra.objective}, positions {position_of(disc.config)}: '
            f"{'discriminator' if spec.detects else 'MLM model'} {count_parameters(disc) / 1e6:.2f}M parameters")
    if gen is None: return line + f' ({spec.summary})'
    shared = count_parameters(disc.electra.embeddings)
    return line + (f', generator {(count_parameters(gen) - shared) / 1e6:.2f}M more (hidden {gen.config.hidden_size}),'
                   f' shared embeddings {shared / 1e6:.2f}M')


def step_flops(electra, batch_size, max_length, sample_rows=2):
    """FLOPs of one training step (forward and backward) at `batch_size` x `max_length`, as torch's FlopCounterMode
    counts them: the matrix products and attention, which are nearly all of it. Counted on `sample_rows` random full
    rows and scaled to the batch (the count is linear in it); the model's weights and gradients are left as they were.
    """
    from torch.utils.flop_counter import FlopCounterMode
    vocab = electra.discriminator.config.vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ids = torch.randint(1000, vocab, (sample_rows, max_length))
        grads = [p.grad for p in electra.parameters()]
        counter = FlopCounterMode(display=False)
        with counter:
            out = electra(ids, torch.zeros_like(ids))
            ElectraLoss()(out).backward()
        for p, g in zip(electra.parameters(), grads): p.grad = g
    return counter.get_total_flops() * batch_size // sample_rows


def step_dataloader(examples, batch_size, max_steps, seed, start_step=0, rank=0, world_size=1, num_workers=0):
    sampler = StepBatches(len(examples), batch_size, max_steps, seed=seed, start_step=start_step, rank=rank,
                          world_size=world_size)
    # Its own generator: starting an iterator must not draw from the global RNG, or a resumed run would diverge
    return torch.utils.data.DataLoader(Batches(examples), sampler=sampler, batch_size=None, num_workers=num_workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


COMPILE_MODES = ('auto', 'none', 'default', 'reduce-overhead', 'max-autotune-no-cudagraphs', 'max-autotune')


def pick_compile(mode, device, world_size=1):
    """'auto': on one CUDA GPU 'reduce-overhead' (compiled kernels replayed as CUDA graphs: ELECTRA-Small's
    kernels are so short that launching them one by one costs more than running them); with several GPUs
    'default' (DDP's gradient hooks don't go into CUDA graphs); on CPUs none: compiling takes 20 s to a minute or
    more there, which only a long run wins back (the CPU recipe asks for 'default': its 64 x 64 tiny step ran
    1.2-1.3x faster compiled, bench/RESULTS.md)."""
    if mode == 'auto':
        if device.type != 'cuda': return 'none'
        return 'reduce-overhead' if world_size == 1 else 'default'
    if mode != 'none' and device.type == 'cpu' and (missing := missing_cpp_compiler()):
        warnings.warn(f'--compile {mode}: torch.compile needs a C++ compiler on CPUs ({missing}); the step runs '
                      'eagerly (install g++ or clang to compile it, or give --compile none)', stacklevel=2)
        return 'none'
    if mode != 'none' and device.type == 'cpu': _quiet_cuda_home_notice()
    return mode


def _quiet_cuda_home_notice():
    """Inductor's CPU build imports torch.utils.cpp_extension, which logs 'No CUDA runtime is found, using
    CUDA_HOME=...' on a machine with a CUDA toolkit folder but no GPU: noise in a CPU run's output. Only that
    notice is dropped; the logger's other messages pass."""
    log = logging.getLogger('torch.utils.cpp_extension')
    if not any(isinstance(f, _NoCudaRuntimeNotice) for f in log.filters): log.addFilter(_NoCudaRuntimeNotice())


class _NoCudaRuntimeNotice(logging.Filter):
    def filter(self, record): return not record.getMessage().startswith('No CUDA runtime is found')


def missing_cpp_compiler():
    """Why inductor cannot build CPU kernels here (its own check: no working C++ compiler), or '' if it can. Asked
    before compiling, so that a machine without one runs eagerly with one line said, not pages of compile errors."""
    try: from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError: return ''  # an older torch: compiling is tried, and falls back (suppress_errors) if it fails
    try: get_cpp_compiler()
    except Exception as e: return first_line(e)
    return ''


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
    if out.disc_logits is None: return {}  # an MLM objective
    real = out.attention_mask.bool()
    labels = out.is_replaced[real].cpu().numpy()
    scores = out.disc_logits[real].float().detach().cpu().numpy()
    return {'disc_auc': float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float('nan')}


def split_held_out(examples, n):
    """(held_out, train): the last `n` examples (at most a tenth of them), then the rest. The examples follow the
    corpus's order, so the held-out ones come from its last documents."""
    n = min(n, len(examples) // 10)
    if n == 0: return examples.select([]), examples                   # (an empty range at the end is refused)
    return examples.select(range(len(examples) - n, len(examples))), examples.select(range(len(examples) - n))


@torch.no_grad()
def held_out_metrics(electra, examples, batch_size=64, seed=123, precision='fp32'):
    """The step's own task on examples never trained on, dropout off, with fixed masking and sampling (`seed`; the
    caller's random state is left as it was): the discriminator's ROC AUC at telling the generator's replacements
    from the original tokens (`disc_auc`) and the generator's accuracy at the masked slots (`gen_acc`); with an MLM
    objective the model's accuracy (`model_acc`)."""
    from sklearn.metrics import roc_auc_score
    device = next(electra.parameters()).device
    was_training = electra.training
    electra.eval()
    labels, scores, hits, slots = [], [], 0.0, 0.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []), autocast:
        torch.manual_seed(seed)
        for i in range(0, len(examples), batch_size):
            rows = examples[i:i + batch_size]
            # forward itself, not the compiled call: a run compiled for training need not compile again for this
            out = electra.forward(rows['input_ids'].long().to(device), rows['token_type_ids'].long().to(device))
            logits = out.mlm_logits if out.mlm_logits is not None else out.model_logits
            hits += float(((logits.max(-1).indices == out.masked_ids).float() * out.masked_weight).sum())
            slots += float(out.masked_weight.sum())
            if out.disc_logits is not None:
                real = out.attention_mask.bool()
                labels.append(out.is_replaced[real].cpu())
                scores.append(out.disc_logits[real].float().cpu())
    electra.train(was_training)
    metrics = {'gen_acc' if electra.generator is not None else 'model_acc': hits / max(slots, 1)}
    if labels:
        labels, scores = torch.cat(labels).numpy(), torch.cat(scores).numpy()
        metrics['disc_auc'] = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float('nan')
    return metrics


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
    opt = make_optimizer(electra, lr=lr, weight_decay=weight_decay, betas=adam_betas, eps=adam_eps)
    from fastai.callback.progress import ProgressCallback
    loss_func = ElectraLoss(generator_weight, discriminator_weight)
    compiled = Compiled(compile) if compile != 'none' else None
    if compiled:
        loss_func, compiled_metrics = compiled(electra, loss_func, metrics.metrics_fn if metrics else step_metrics)
        if metrics: metrics.metrics_fn = compiled_metrics
    cbs = list(extra_cbs)
    if compiled and compiled.cudagraphs: cbs.append(CudaGraphSteps())
    if world_size > 1: cbs.append(DataParallel([device.index] if device.type == 'cuda' else None))
    learn = build_learner(electra, train_dl, loss_func, opt, lr=lr, total_steps=total_steps,
                          warmup_steps=warmup_steps, clip=clip, precision=precision, device=device,
                          start_step=start_step, extra_cbs=cbs)
    learn.remove_cb(ProgressCallback)
    if rank == 0: learn.add_cb(StepProgress(progress_every))
    else: learn.logger = lambda *args: None
    return learn


class CudaGraphSteps(Callback):
    """Marks the start of each step for CUDA graph replay (torch.compile's cudagraphs modes)."""

    def before_batch(self): torch.compiler.cudagraph_mark_step_begin()


AUC_LEARNED, AUC_LEARNING = 0.80, 0.60  # "did it learn?": the discriminator's AUC on the last logged batch


def learning_summary(history, held_out=None, n_held_out=0):
    """Did it learn? The generator's (or, with an MLM objective, the model's) MLM loss and accuracy from the first
    logged step to the last, and the discriminator's loss against the majority-class baseline and its AUC, with a
    plain verdict: "learned" at AUC >= 0.80, "learning" at >= 0.60, "not yet" below. `held_out`
    (`held_out_metrics` on `n_held_out` examples never trained on), when given, is what the verdict reads."""
    if len(history) < 2: return 'Too few logged steps to judge learning.'
    first, last = history[0], history[-1]
    lines = []
    for who, loss, acc in (('Generator', 'mlm_loss', 'gen_acc'), ('Model', 'model_mlm_loss', 'model_acc')):
        if loss not in last: continue
        drop = 1 - last[loss] / first[loss]
        lines.append(f"{who} MLM loss {first[loss]:.3f} (step {first['step']}) -> {last[loss]:.3f} "
                     f"(step {last['step']}): {drop:.0%} lower; accuracy {first[acc]:.3f} -> {last[acc]:.3f}"
                     + ('' if last[acc] > first[acc] else ' (not rising)'))
    if held_out:
        lines.append(f'On {n_held_out:,} held-out examples (never trained on): ' + ', '.join(
            f'{name} {held_out[key]:.3f}' for key, name in (('gen_acc', 'generator accuracy'),
                                                            ('model_acc', 'model accuracy'),
                                                            ('disc_auc', 'discriminator AUC')) if key in held_out))
    if 'disc_loss' in last:
        from .electra import binary_entropy
        baseline = binary_entropy(last['replaced_rate'])
        auc, where = ((held_out['disc_auc'], 'held-out AUC') if held_out and 'disc_auc' in held_out else
                      (last.get('disc_auc', float('nan')), 'AUC (last batch)'))
        verdict = ('learned to spot replaced tokens' if auc >= AUC_LEARNED else
                   'learning, not there yet' if auc >= AUC_LEARNING else 'not yet learning: close to guessing')
        below = 'below' if last['disc_loss'] < baseline else 'not below'
        lines.append(f"Discriminator loss {last['disc_loss']:.4f} vs majority-class baseline {baseline:.4f} "
                     f"(replaced rate {last['replaced_rate']:.3f}): {below}; {where} {auc:.3f}: {verdict} "
                     f"(AUC {AUC_LEARNED:.2f}+ is clear learning, 0.5 is chance)")
    return '\n'.join(lines)
