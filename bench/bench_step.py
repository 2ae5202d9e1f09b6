#!/usr/bin/env python
"""Benchmarks: the ELECTRA pretraining step against its peers, data preprocessing, GLUE finetuning, and a quality
guard for the fast path. Prints tables and appends them to bench/RESULTS.md. Not a test: nothing here asserts.

    python bench/bench_step.py --size small --batch_size 32                  # the step (default --what step)
    python bench/bench_step.py --what data,finetune,quality --size small     # the rest

--what step: the same model, batch and length, timed in three implementations (and this project's step with each
TUPE position option), each in its own process, run interleaved (A B C A B C ...) over --repeats rounds; each
process does --warmup untimed steps, then --steps timed:
    this project      pretrain.py's step: fastai Learner from `pretraining_learner` with its callbacks, our Adam,
                      precision `pick_precision('auto')`, the `step_dataloader` over the bundled corpus
    HF baseline       ElectraForMaskedLM + ElectraForPreTraining (same configs, same shared embeddings), generator
                      logits over the full vocabulary at all L positions, fp32, eager attention, torch AdamW,
                      our masking, Gumbel sampling at every masked slot, 1 x MLM + 50 x BCE, clip 1.0, a plain loop
    electra-pytorch   the `electra-pytorch` 0.1.2 package around the same Hugging Face models, fp32, eager,
                      torch AdamW, clip 1.0, a plain loop
    ..., tupe-a/-r    this project's step with pretrain.py's --position tupe-a / tupe-r (`--variants ours,tupe_a,tupe_r`
                      times the positions alone)
All read the same batches (the project's `step_dataloader`, same seed).
"""
import argparse
import datetime
import json
import math
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
warnings.filterwarnings('ignore', message='.*torch.jit.script.*is deprecated')  # raised inside a dependency

import torch  # noqa: E402

VARIANTS = {  # name on the command line -> name in the tables
    'ours': 'this project',
    'hf': 'HF baseline',
    'hf_bf16': 'HF baseline, bf16 + SDPA',  # the same with bf16 autocast and SDPA: what one line of PyTorch gives
    'electra_pytorch': 'electra-pytorch 0.1.2',
    'tupe_a': 'this project, tupe-a',    # the same step with TUPE's positions (--position): their cost
    'tupe_r': 'this project, tupe-r',
    'rope': 'this project, rope',
    'baseline': 'this project at --baseline',  # an earlier commit's step (its `ours`, its defaults), side by side
}
POSITION_OF = {'ours': 'absolute', 'tupe_a': 'tupe-a', 'tupe_r': 'tupe-r', 'rope': 'rope'}
WHATS = ('step', 'data', 'finetune', 'quality')
PRETRAIN_LR = 5e-4  # ELECTRA-Small (RECIPE.md); the schedule does not change the step time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Time the ELECTRA pretraining step against its peers, data preprocessing '
                                'and GLUE finetuning; check the fast path against fp32. See bench/README.md.',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--what', default='step', help=f"comma list among {', '.join(WHATS)}")
    p.add_argument('--size', default='small', choices=['tiny', 'small', 'base', 'large'])
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--max_length', type=int, default=128)
    p.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    p.add_argument('--steps', type=int, default=20, help='timed steps per process')
    p.add_argument('--warmup', type=int, default=5, help='untimed steps per process, before the timed ones')
    p.add_argument('--repeats', type=int, default=3, help='rounds of A B C ... (data: rebuilds; finetune: epochs)')
    p.add_argument('--variants', default=','.join(VARIANTS), help=f"comma list among {', '.join(VARIANTS)}")
    p.add_argument('--threads', type=int, default=0, help='torch threads per process; 0: all cores')
    p.add_argument('--compile', default='auto', help="this project's torch.compile mode, as pretrain.py's --compile "
                   "(auto: default mode on CUDA, none on CPU)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--baseline', default='', help="a git revision whose step runs as the variant 'baseline' (its "
                   "own code and defaults, in a temporary worktree), interleaved with this tree's")
    p.add_argument('--finetune_task', default='SST-2', help='a GLUE task with a train split in datasets/glue_sample')
    p.add_argument('--finetune_batch_size', type=int, default=32, help='RECIPE.md: batch 32')
    p.add_argument('--quality_steps', type=int, default=300, help='steps of each path in the quality guard')
    p.add_argument('--results', default=str(REPO / 'bench' / 'RESULTS.md'),
                   help="Markdown file to append to; 'none': don't")
    p.add_argument('--worker', default=None, choices=list(VARIANTS), help=argparse.SUPPRESS)
    p.add_argument('--result_file', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.what = [w.strip() for w in args.what.split(',') if w.strip()]
    args.variants = [v.strip() for v in args.variants.split(',') if v.strip()]
    for w in args.what:
        if w not in WHATS: p.error(f"--what: unknown '{w}'; choose among {', '.join(WHATS)}")
    for v in args.variants:
        if v not in VARIANTS: p.error(f"--variants: unknown '{v}'; choose among {', '.join(VARIANTS)}")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error('--steps, --repeats and --batch_size must be >= 1, --warmup >= 0')
    args.threads = args.threads or len(os.sched_getaffinity(0))
    if args.baseline and 'baseline' not in args.variants: args.variants.append('baseline')
    if 'baseline' in args.variants and not args.baseline and not args.worker:
        p.error("the variant 'baseline' needs --baseline REV (a git revision)")
    return args


# ---------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------
def setup(args):
    """Threads, device and the default precision, as pretrain.py picks them."""
    from _utils.learner import pick_device, pick_precision
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    return device, pick_precision('auto', device)


def synchronize(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def auto_sampling(device):
    """What `sample_from_softmax(method='auto')` picks on this device."""
    return 'gumbel' if device.type == 'cuda' else 'inverse_cdf'


def peak_memory_mb(device):
    """CUDA: peak allocated by tensors. CPU: the process's peak resident set (ru_maxrss, kB on Linux)."""
    if device.type == 'cuda': return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bundled_examples(args, verbose=False):
    from _utils.text import load_tokenizer, pretraining_examples
    tokenizer = load_tokenizer('bundled')
    return tokenizer, pretraining_examples('bundled', tokenizer, args.max_length, seed=args.seed, verbose=verbose)


def step_loader(args, examples, device, total_steps):
    """The data loader pretrain.py builds (no worker processes on CPU, 4 on GPU), the same for every variant."""
    from _utils.pretraining import step_dataloader
    return step_dataloader(examples, args.batch_size, total_steps, seed=args.seed,
                           num_workers=4 if device.type == 'cuda' else 0)


def machine(args, device):
    if device.type == 'cuda':
        what = f'{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})'
    else:
        model = platform.processor() or platform.machine()
        if Path('/proc/cpuinfo').exists():
            names = [line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')]
            model = names[0] if names else model
        what = f'{model}, {os.cpu_count()} cores'
    import transformers
    return (f'{what}; torch {torch.__version__}, transformers {transformers.__version__}, '
            f'{args.threads} torch threads per process')


def git_commit():
    try:
        sha = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return sha + (' (with uncommitted changes)' if dirty else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def markdown_table(headers, rows):
    """A Markdown table whose columns line up in a terminal too. Numbers right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda row: '| ' + ' | '.join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)) + ' |'
    rule = '|' + '|'.join(('-' * (w + 1) + ':') if n else ('-' * (w + 2)) for w, n in zip(widths, numeric)) + '|'
    return '\n'.join([fmt(headers), rule] + [fmt(r) for r in cells])


def _is_number(s):
    try: float(s.replace(',', '').rstrip('x%')); return True
    except ValueError: return False


# ---------------------------------------------------------------------------------------------------------------
# --what step: one worker process per variant and round
# ---------------------------------------------------------------------------------------------------------------
def worker(args):
    """Build one variant, run warmup + timed steps, write {step_s: [...], ...} to --result_file."""
    device, precision = setup(args)
    from _utils.learner import seed_everything
    seed_everything(args.seed)
    tokenizer, examples = bundled_examples(args)
    if device.type == 'cuda': torch.cuda.reset_peak_memory_stats(device)
    if args.worker in POSITION_OF:
        step_ends, info = run_ours(args, tokenizer, examples, device, precision, POSITION_OF[args.worker])
    else:
        run = {'hf': run_hf_baseline, 'hf_bf16': run_hf_bf16, 'electra_pytorch': run_electra_pytorch}[args.worker]
        step_ends, info = run(args, tokenizer, examples, device, precision)   # perf_counter() at the end of each step
    step_s = [b - a for a, b in zip(step_ends[args.warmup:], step_ends[args.warmup + 1:])]
    result = dict(step_s=step_s, peak_mem_mb=peak_memory_mb(device), device=str(device), **info)
    Path(args.result_file).write_text(json.dumps(result))


def run_ours(args, tokenizer, examples, device, precision, position='absolute'):
    """pretrain.py's step: the Learner from `pretraining_learner`, its callbacks and a MetricsLogger (no backends);
    `position` as pretrain.py's --position."""
    from _utils.electra import step_metrics
    from _utils.loggers import MetricsLogger
    from _utils.pretraining import build_electra, pick_compile, pretraining_learner
    from fastai.callback.core import Callback

    class StepTimer(Callback):
        order = 100  # after every other callback's after_batch: the step as the Learner runs it

        def __init__(self): self.ends = []

        def before_epoch(self):  # the start of step 1
            synchronize(device)
            self.ends.append(time.perf_counter())

        def after_batch(self):
            if len(self.ends) in (args.warmup, total): synchronize(device)   # the timed block's ends only
            self.ends.append(time.perf_counter())
            self.last_loss = self.learn.loss.detach()  # no host sync here

    total = args.warmup + args.steps
    electra = build_electra(args.size, tokenizer, max_length=args.max_length, position=position)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as log_dir:
        logger = MetricsLogger(log_dir, step_metrics, every=50, loggers=(),
                               tokens_per_step=args.batch_size * args.max_length, total_steps=total)
        compile_mode = pick_compile(args.compile, device)
        learn = pretraining_learner(electra, step_loader(args, examples, device, total), lr=PRETRAIN_LR,
                                    total_steps=total, warmup_steps=min(10_000, total), precision=precision,
                                    device=device, extra_cbs=[logger, timer], compile=compile_mode, metrics=logger)
        learn.fit(1)
    sampling = electra.sampling if electra.sampling != 'auto' else auto_sampling(device)
    from torch._dynamo.utils import counters
    return timer.ends, dict(precision=precision, attention=electra.discriminator.config._attn_implementation,
                            sampling=sampling, last_loss=float(timer.last_loss), compile=compile_mode,
                            graph_breaks={str(k): v for k, v in counters['graph_break'].items()})


def hf_models(args, tokenizer, device, attention='eager'):
    """ElectraForMaskedLM + ElectraForPreTraining with our configs and shared embeddings, `attention` as
    transformers' attn_implementation."""
    from _utils.electra import electra_configs, share_embeddings
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    gen_config, disc_config = electra_configs(args.size, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                              attn_implementation=attention)
    discriminator = ElectraForPreTraining(disc_config)
    generator = ElectraForMaskedLM(gen_config)
    share_embeddings(generator, discriminator)
    return generator.to(device), discriminator.to(device)


def adamw(modules):
    params = list(torch.nn.ModuleList(modules).parameters())  # shared embeddings once
    return params, torch.optim.AdamW(params, lr=PRETRAIN_LR, eps=1e-6, weight_decay=0.01)


def gumbel_sample(logits):
    """argmax(logits + Gumbel noise) in fp32: one exact sample per row of softmax(logits)."""
    u = torch.rand_like(logits, dtype=torch.float32).clamp_min(1e-20)
    return (logits.float() - torch.log((-torch.log(u)).clamp_min(1e-20))).argmax(-1)


def run_hf_bf16(args, tokenizer, examples, device, precision):
    return run_hf_baseline(args, tokenizer, examples, device, precision, bf16=True)


def run_hf_baseline(args, tokenizer, examples, device, precision, bf16=False):
    """A plain PyTorch ELECTRA step on Hugging Face models: fp32 and eager attention, or with `bf16` the forward
    under bf16 autocast and SDPA attention (the one-line speed-ups a PyTorch user knows)."""
    import contextlib

    import torch.nn.functional as F
    from _utils.electra import mask_positions, max_predictions_for, replace_masked
    generator, discriminator = hf_models(args, tokenizer, device, 'sdpa' if bf16 else 'eager')
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    params, opt = adamw([generator, discriminator])
    specials = torch.tensor(sorted({tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id,
                                    tokenizer.pad_token_id}), device=device)
    n_slots = max_predictions_for(args.max_length, 0.15)
    vocab_size = generator.config.vocab_size
    generator.train(); discriminator.train()
    synchronize(device)
    ends = [time.perf_counter()]
    for ids, types, _ in step_loader(args, examples, device, args.warmup + args.steps):
        ids, types = ids.to(device, non_blocking=True), types.to(device, non_blocking=True)    # (B, L)
        attention_mask = (ids != tokenizer.pad_token_id).long()
        positions, weight = mask_positions(ids, attention_mask, specials, 0.15, n_slots)          # (B, N)
        masked_ids = ids.gather(1, positions)
        masked = replace_masked(ids, positions, weight, masked_ids, tokenizer.mask_token_id, 0.85, 0.0, vocab_size)
        with autocast():
            logits = generator(input_ids=masked, attention_mask=attention_mask, token_type_ids=types).logits  # (B,L,V)
        logits = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, vocab_size)).float()   # (B, N, V)
        ce = F.cross_entropy(logits.flatten(0, 1), masked_ids.flatten(), reduction='none')
        mlm = (ce * weight.flatten()).sum() / weight.sum()
        with torch.no_grad():
            sampled = gumbel_sample(logits)                                                       # (B, N)
        disc_input = ids.scatter(1, positions, torch.where(weight.bool(), sampled, sampled[:, :1]))
        is_replaced = (disc_input != ids).float()
        with autocast():
            disc_logits = discriminator(input_ids=disc_input, attention_mask=attention_mask,
                                        token_type_ids=types).logits.float()
        real = attention_mask.float()
        bce = (F.binary_cross_entropy_with_logits(disc_logits, is_replaced, reduction='none') * real).sum() / real.sum()
        loss = mlm + 50 * bce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if len(ends) in (args.warmup, args.warmup + args.steps): synchronize(device)  # the timed block's ends
        ends.append(time.perf_counter())
    return ends, dict(precision='bf16' if bf16 else 'fp32', attention='sdpa' if bf16 else 'eager', sampling='gumbel',
                      last_loss=float(loss), compile='none')


class Logits(torch.nn.Module):
    """A Hugging Face model as the callable electra-pytorch expects: input ids (+ kwargs) -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, **kwargs): return self.model(input_ids=input_ids, **kwargs).logits


def run_electra_pytorch(args, tokenizer, examples, device, precision):
    from electra_pytorch import Electra
    generator, discriminator = hf_models(args, tokenizer, device)
    electra = Electra(Logits(generator), Logits(discriminator), num_tokens=len(tokenizer), mask_prob=0.15,
                      replace_prob=0.85, random_token_prob=0.0, mask_token_id=tokenizer.mask_token_id,
                      pad_token_id=tokenizer.pad_token_id,
                      mask_ignore_token_ids=[tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id],
                      disc_weight=50.0, gen_weight=1.0).to(device).train()
    params, opt = adamw([electra])
    synchronize(device)
    ends = [time.perf_counter()]
    for ids, types, _ in step_loader(args, examples, device, args.warmup + args.steps):
        ids, types = ids.to(device, non_blocking=True), types.to(device, non_blocking=True)
        out = electra(ids, token_type_ids=types, attention_mask=(ids != tokenizer.pad_token_id).long())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if len(ends) in (args.warmup, args.warmup + args.steps): synchronize(device)  # the timed block's ends
        ends.append(time.perf_counter())
    return ends, dict(precision='fp32', attention='eager', sampling='gumbel', last_loss=float(out.loss),
                      compile='none')


def baseline_tree(rev, tmp):
    """A detached worktree of revision `rev` under `tmp` (removed with it), for the variant 'baseline'."""
    where = Path(tmp) / 'baseline'
    subprocess.run(['git', 'worktree', 'add', '--detach', str(where), rev], cwd=REPO, check=True,
                   capture_output=True)
    return where


def bench_step(args, device):
    bundled_examples(args, verbose=True)  # build the example cache once, before the workers read it
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    results = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        old = baseline_tree(args.baseline, tmp) if 'baseline' in args.variants else None
        try:
            run_rounds(args, device, env, results, tmp, old)
        finally:
            if old: subprocess.run(['git', 'worktree', 'remove', '--force', str(old)], cwd=REPO, capture_output=True)
    if old: VARIANTS['baseline'] = f'this project at {args.baseline}'
    return step_table(args, device, results)


def run_rounds(args, device, env, results, tmp, old):
    for r in range(args.repeats):
        for v in args.variants:
            out = Path(tmp) / f'{v}-{r}.json'
            root, worker = (old, 'ours') if v == 'baseline' else (REPO, v)
            cmd = [sys.executable, str(root / 'bench' / 'bench_step.py'), '--worker', worker, '--result_file', str(out),
                   '--size', args.size, '--batch_size', str(args.batch_size), '--max_length', str(args.max_length),
                   '--device', str(device), '--steps', str(args.steps), '--warmup', str(args.warmup),
                   '--threads', str(args.threads), '--seed', str(args.seed),
                   '--compile', 'auto' if v == 'baseline' else args.compile]
            done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            if done.returncode != 0 or not out.exists():
                tail = '\n'.join((done.stdout + done.stderr).strip().splitlines()[-25:])
                sys.exit(f'worker {v} (round {r + 1}) failed with exit code {done.returncode}:\n{tail}')
            res = json.loads(out.read_text())
            results[v].append(res)
            ms = 1000 * statistics.fmean(res['step_s'])
            print(f'  round {r + 1}/{args.repeats} {VARIANTS[v]:<22} {ms:9.1f} ms/step'
                  + (f"; graph breaks: {res['graph_breaks']}" if res.get('graph_breaks') else ''), flush=True)


def step_table(args, device, results):
    tokens = args.batch_size * args.max_length
    summary = {}
    for v, rounds in results.items():
        per_round = [1000 * statistics.fmean(res['step_s']) for res in rounds]
        ms = statistics.median(per_round)
        summary[v] = dict(ms=ms, tokens_per_s=tokens / (ms / 1000), round_min=min(per_round), round_max=max(per_round),
                          peak=max(res['peak_mem_mb'] for res in rounds), last_loss=rounds[-1]['last_loss'],
                          **{k: rounds[0].get(k, 'none') for k in ('precision', 'attention', 'sampling', 'compile')})
    ref = summary.get('ours')
    flops = step_flops(args)
    peak = peak_flops(device)
    bounds = cpu_roofline(args, {s['precision'] for s in summary.values()}) if device.type == 'cpu' else {}
    mem = 'peak GPU MB (allocated)' if device.type == 'cuda' else 'peak RSS MB (process)'
    headers = ['implementation', 'precision', 'attention', 'sampling', 'compile', 'ms/step (median)',
               'round means', 'tokens/s', 'vs this project', 'model TFLOP/s',
               'of matmul roofline' if bounds else 'MFU', mem, 'last loss']
    rows = [[VARIANTS[v], s['precision'], s['attention'], s['sampling'], s['compile'], f"{s['ms']:.1f}",
             f"{s['round_min']:.1f}-{s['round_max']:.1f}", f"{s['tokens_per_s']:,.0f}",
             f"{s['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else 'n/a',
             f"{flops / (s['ms'] / 1000) / 1e12:.2f}",
             f"{bounds[s['precision']]['bound_s'] / (s['ms'] / 1000):.1%}" if bounds else
             f"{flops / (s['ms'] / 1000) / peak:.1%}" if peak else 'n/a', f"{s['peak']:,.0f}",
             f"{s['last_loss']:.3f}"] for v, s in summary.items()]
    title = (f'Pretraining step: ELECTRA-{args.size}, batch {args.batch_size} x length {args.max_length} '
             f'({tokens:,} tokens/step), {device}; {args.repeats} rounds x {args.steps} timed steps '
             f'(after {args.warmup} warmup) per implementation, interleaved, one process each')
    notes = ('ms/step: the median over rounds of each round\'s mean step time, i.e. the wall time of its timed steps '
             '/ their number, with the GPU synchronised only at the two ends (as in a training run, where the CPU '
             'queues work ahead of the GPU). '
             'tokens/s = batch x length / that step time (padding included, the same for all); "vs this project" = '
             "the implementation's tokens/s / this project's (>1: faster). The HF baseline and electra-pytorch compute "
             'generator logits over the full vocabulary at all positions; this project only at the masked slots. '
             f'Model FLOPs = {flops / 1e12:.3f} TFLOP per step for every row: the matrix products of the step as this '
             'project computes it (forward + backward = 3 x forward; both transformers, attention, embedding '
             'projections, generator head at the masked slots), so extra work a peer does counts against it. '
             + (f'MFU = model FLOP/s / {peak / 1e12:.0f} TFLOP/s (dense bf16 peak of this GPU).' if peak else
                roofline_note(bounds) if bounds else 'MFU: n/a (no peak figure for this device).'))
    if device.type == 'cpu':
        notes += ' Peak RSS is the whole process (Python, libraries, data), not just the model.'
    if 'ours' in results and len(results) > 1:
        ours = [statistics.fmean(res['step_s']) for res in results['ours']]
        per_peer = []
        for v, rounds in results.items():
            if v == 'ours': continue
            ratios = [statistics.fmean(res['step_s']) / o for res, o in zip(rounds, ours)]
            per_peer.append(f"{VARIANTS[v]} {', '.join(f'{x:.2f}x' for x in ratios)} "
                            f"(median {statistics.median(ratios):.2f}x)")
        notes += (" This project's speed-up over each peer, round by round (a round runs the implementations back "
                  "to back, so the machine's drift cancels best there): " + '; '.join(per_peer) + '.')
    return title, markdown_table(headers, rows), notes


def step_flops(args):
    """Matrix-product FLOPs of one pretraining step as this project computes it (multiply-add = 2 FLOPs)."""
    from _utils.electra import electra_configs, max_predictions_for
    gen, disc = electra_configs(args.size)
    B, L = args.batch_size, args.max_length
    T, M = B * L, B * max_predictions_for(L, 0.15)          # tokens, masked slots

    def encoder(c):
        h, i, e = c.hidden_size, c.intermediate_size, c.embedding_size
        layer = 2 * T * (4 * h * h + 2 * h * i) + 2 * 2 * B * L * L * h      # projections, MLP, QK^T and AV
        return c.num_hidden_layers * layer + (2 * T * e * h if e != h else 0)  # + embeddings_project

    forward = (encoder(gen) + 2 * M * (gen.hidden_size * gen.embedding_size + gen.embedding_size * gen.vocab_size)
               + encoder(disc) + 2 * T * (disc.hidden_size ** 2 + disc.hidden_size))
    return 3 * forward


def cpu_roofline(args, precisions):
    """{precision: roofline.roofline(...)}: this CPU's own matrix-product speed on the step's shapes."""
    import roofline
    torch.set_num_threads(args.threads)
    return {p: roofline.roofline(args.size, args.batch_size, args.max_length, p) for p in precisions}


def roofline_note(bounds):
    parts = [f"{p}: peak {b['peak'] / 1e12:.2f} TFLOP/s on the step's shapes, matmul-bound step "
             f"{b['bound_s'] * 1e3:.1f} ms" for p, b in sorted(bounds.items())]
    return ('Of matmul roofline = the step\'s matrix products, each timed alone on this CPU at its shape and precision '
            '(bench/roofline.py), summed, / the measured step time: 100% would be a step that is nothing but matrix '
            'products at this machine\'s speed (' + '; '.join(parts) + ').')


PEAK_BF16 = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12, 'A10': 125e12, 'V100': 125e12}


def peak_flops(device):
    if device.type != 'cuda': return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


# ---------------------------------------------------------------------------------------------------------------
# --what data: preprocessing throughput
# ---------------------------------------------------------------------------------------------------------------
def bench_data(args, device):
    from _utils.text import load_tokenizer, pretraining_examples, resolve_corpus
    _, files = resolve_corpus('bundled')
    mb = sum(Path(f).stat().st_size for f in files) / 1e6
    tokenizer = load_tokenizer('bundled')
    seconds = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: the examples are really rebuilt
            t0 = time.perf_counter()
            examples = pretraining_examples('bundled', tokenizer, args.max_length, seed=args.seed, num_proc=1,
                                            cache_root=Path(tmp) / 'cache', verbose=False)
            seconds.append(time.perf_counter() - t0)
            n_examples = len(examples)
            n_tokens = int((examples[:]['input_ids'] != tokenizer.pad_token_id).sum())
        print(f'  rebuild {r + 1}/{args.repeats}: {seconds[-1]:.2f} s', flush=True)
    s = statistics.median(seconds)
    headers = ['corpus', 'raw text MB', 'examples', 'tokens (non-pad)', 's (median)', 'MB/s per process',
               'examples/s', 'tokens/s']
    rows = [[f'bundled ({len(files)} files)', f'{mb:.2f}', f'{n_examples:,}', f'{n_tokens:,}', f'{s:.2f}',
             f'{mb / s:.2f}', f'{n_examples / s:,.0f}', f'{n_tokens / s:,.0f}']]
    title = (f'Data preprocessing: `pretraining_examples` (read, tokenize, pack, save) at length {args.max_length}, '
             f'num_proc=1, into an empty cache; median of {args.repeats}')
    notes = 'Throughput of one process; with num_proc=P the corpus is split across P processes.'
    return title, markdown_table(headers, rows), notes


# ---------------------------------------------------------------------------------------------------------------
# --what finetune: one GLUE epoch
# ---------------------------------------------------------------------------------------------------------------
def bench_finetune(args, device, precision):
    from _utils.callbacks import autocast_dtype
    from _utils.classifier import ElectraClassifier, loss_for
    from _utils.electra import build_models
    from _utils.finetuning import Recipe
    from _utils.glue import load_glue_tsv, task_by_name
    from _utils.glue_data import encode, glue_dataloader
    from _utils.learner import seed_everything
    from _utils.optim import make_optimizer
    from _utils.text import load_tokenizer
    seed_everything(args.seed)
    task = task_by_name(args.finetune_task)
    tokenizer = load_tokenizer('bundled')
    train = encode(load_glue_tsv(task, splits=('train',), required=('train',))['train'], tokenizer, 128)
    dl = glue_dataloader(train, batch_size=args.finetune_batch_size, shuffle=True, seed=args.seed)
    _, discriminator = build_models(args.size, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model = ElectraClassifier(discriminator.electra, task.n_outputs).to(device).train()
    n_layers = discriminator.config.num_hidden_layers
    # RECIPE.md: lr 3e-4 (Small), no weight decay, layer-wise lr decay 0.8
    opt = make_optimizer(model, lr=3e-4, weight_decay=0.0, layer_lr_decay=0.8, n_layers=n_layers)
    loss_fn, dtype = loss_for(task, Recipe().loss_reduction), autocast_dtype(precision)

    def epoch():
        synchronize(device)
        t0 = time.perf_counter()
        for input_ids, attention_mask, token_type_ids, labels in dl:
            input_ids, attention_mask, token_type_ids, labels = (t.to(device, non_blocking=True) for t in
                                                                 (input_ids, attention_mask, token_type_ids, labels))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(input_ids, attention_mask, token_type_ids), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        synchronize(device)
        return time.perf_counter() - t0

    if precision == 'fp16':
        print('  note: fp16 finetuning here has no loss scaling; the timing is what matters')
    epoch()  # warmup epoch, untimed
    seconds = []
    for r in range(args.repeats):
        seconds.append(epoch())
        print(f'  epoch {r + 1}/{args.repeats}: {seconds[-1]:.2f} s', flush=True)
    s = statistics.median(seconds)
    n_tokens = sum(len(ids) for ids in train['input_ids'])
    headers = ['task', 'train examples', 'batches', 'precision', 's/epoch (median)', 'examples/s', 'tokens/s (non-pad)']
    rows = [[task.name, f'{len(train):,}', len(dl), precision, f'{s:.2f}', f'{len(train) / s:,.1f}',
             f'{n_tokens / s:,.0f}']]
    title = (f'GLUE finetuning: one epoch of {task.name} (bundled sample) with ElectraClassifier '
             f'(ELECTRA-{args.size}, random init), our Adam with layer-wise lr decay, '
             f'batch {args.finetune_batch_size}, '
             f'length-grouped batches, clip 1.0, {device}; median of {args.repeats} epochs after one warmup epoch')
    return title, markdown_table(headers, rows), 'A plain loop over `_utils/glue.py` pieces (no dev evaluation).'


# ---------------------------------------------------------------------------------------------------------------
# --what quality: the fast path learns like the plain fp32 path
# ---------------------------------------------------------------------------------------------------------------
QUALITY_TOLERANCE = 0.05


def quality_run(args, device, precision, sampling, examples, tokenizer, compile_mode='none', torch_dropout=False):
    """Train `quality_steps` steps from the same seed (same init, same batches); per-step MLM and disc losses.
    `torch_dropout`: torch's dropout and SDPA instead of the project's CPU dropout (`_utils/speedups.py`)."""
    from _utils.learner import seed_everything
    from _utils.pretraining import build_electra, pretraining_learner
    from fastai.callback.core import Callback

    class LossRecorder(Callback):
        order = 100
        def __init__(self): self.mlm, self.disc = [], []

        def after_batch(self):
            self.mlm.append(float(self.learn.pred.mlm_loss.detach()))
            self.disc.append(float(self.learn.pred.disc_loss.detach()))

    seed_everything(args.seed)
    electra = build_electra(args.size, tokenizer, max_length=args.max_length)
    electra.sampling = sampling
    if torch_dropout:
        from _utils.speedups import FastDropout
        for module in electra.modules():
            if isinstance(module, FastDropout): module.__class__ = torch.nn.Dropout
        for net in (electra.generator, electra.discriminator): net.config._attn_implementation = 'sdpa'
    rec = LossRecorder()
    steps = args.quality_steps
    learn = pretraining_learner(electra, step_loader(args, examples, device, steps), lr=PRETRAIN_LR, total_steps=steps,
                                warmup_steps=max(1, steps // 10), precision=precision, device=device, extra_cbs=[rec],
                                compile=compile_mode)
    t0 = time.perf_counter()
    with learn.no_logging(), learn.no_bar(): learn.fit(1)
    print(f'  {precision}/{sampling}/compile {compile_mode}: {steps} steps in {time.perf_counter() - t0:.1f} s',
          flush=True)
    return rec


def bench_quality(args, device, fast_precision):
    tokenizer, examples = bundled_examples(args)
    fast_sampling = auto_sampling(device)
    from _utils.pretraining import pick_compile
    fast_compile = pick_compile(args.compile, device)
    fast = quality_run(args, device, fast_precision, 'auto', examples, tokenizer, fast_compile)
    ref = quality_run(args, device, 'fp32', 'gumbel', examples, tokenizer, torch_dropout=True)
    window = min(50, args.quality_steps)
    headers = ['loss', 'step 1 (fp32)', f'fp32 mean, last {window}', f'fast mean, last {window}', 'diff / fp32 mean',
               'noise: 2 x s.e. / fp32 mean', 'tolerance', 'verdict']
    rows = []
    for name, a, b in (('generator MLM', fast.mlm, ref.mlm), ('discriminator BCE', fast.disc, ref.disc)):
        mean_fast, mean_ref = statistics.fmean(a[-window:]), statistics.fmean(b[-window:])
        se = statistics.stdev(b[-window:]) / math.sqrt(window) if window > 1 else float('nan')
        rel = abs(mean_fast - mean_ref) / mean_ref
        noise = 2 * se / mean_ref
        verdict = ('within' if rel < QUALITY_TOLERANCE else 'OUTSIDE') + \
                  (' (inconclusive: noise >= tolerance, run more steps)' if not noise < QUALITY_TOLERANCE else '')
        rows.append([name, f'{b[0]:.4f}', f'{mean_ref:.4f}', f'{mean_fast:.4f}', f'{rel:.2%}', f'{noise:.2%}',
                     f'{QUALITY_TOLERANCE:.0%}', verdict])
    differs = []
    if fast_precision != 'fp32': differs.append(f'precision ({fast_precision} autocast vs fp32)')
    if fast_sampling != 'gumbel': differs.append(f'sampling ({fast_sampling} vs gumbel)')
    if fast_compile != 'none': differs.append(f'torch.compile (mode {fast_compile} vs eager)')
    if device.type == 'cpu': differs.append("dropout (the project's CPU dropout vs torch's bernoulli_)")
    title = (f'Quality guard: our fast path ({fast_precision}, sampling auto = {fast_sampling}, compile {fast_compile}) '
             f'vs our plain fp32 path '
             f"(fp32, gumbel sampling, torch's dropout and SDPA), ELECTRA-{args.size}, "
             f'batch {args.batch_size} x {args.max_length}, '
             f'{args.quality_steps} steps from the same seed, same initialisation and batches, {device}')
    notes = ('The paths are not bitwise equal (different arithmetic or random-number use, hence different masks '
             'after step 1), so the smoothed curves are compared: |mean_fast - mean_fp32| over the last '
             f'{window} steps must be < {QUALITY_TOLERANCE:.0%} of the fp32 mean. The tolerance must sit above the '
             'noise of a mean over that window (the "noise" column: twice the standard error of the fp32 mean; if it '
             'is not below the tolerance, the verdict is inconclusive: run more --quality_steps or a bigger batch) '
             'and is small enough that a path which learns differently (a wrong loss weight, a biased sample) '
             'stands out. ')
    if differs:
        notes += 'Here the paths differ in ' + ' and '.join(differs) + '.'
    else:
        notes += 'Here both paths are identical (fp32, gumbel): the check is trivially met.'
    if device.type == 'cpu' and fast_precision == 'fp32':
        notes += (' This CPU has no fast bf16 (no AMX / AVX512-BF16), so the default precision is fp32, the same as '
                  'the reference: only sampling and dropout are compared; run on a GPU or a bf16 CPU to check bf16.')
    return title, markdown_table(headers, rows), notes


# ---------------------------------------------------------------------------------------------------------------
def main():
    args = parse_args()
    if args.worker: return worker(args)
    # On SIGTERM, exit through Python so that subprocess.run kills the running worker too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    device, precision = setup(args)
    import datasets
    datasets.disable_progress_bars()  # clean tables
    command = 'python bench/bench_step.py ' + shlex.join(sys.argv[1:])
    header = (f'{datetime.datetime.now():%Y-%m-%d %H:%M}, commit {git_commit()}\n\n'
              f'`{command}`\n\nMachine: {machine(args, device)}; default precision here: {precision}')
    print(header.replace('`', ''), flush=True)
    sections = []
    for what in args.what:
        print(f'\n[{what}]', flush=True)
        if what == 'step': sections.append(bench_step(args, device))
        if what == 'data': sections.append(bench_data(args, device))
        if what == 'finetune': sections.append(bench_finetune(args, device, precision))
        if what == 'quality': sections.append(bench_quality(args, device, precision))
        title, table, notes = sections[-1]
        print(f'\n{title}\n\n{table}\n\n{notes}', flush=True)
    if args.results.lower() != 'none':
        path = Path(args.results)
        new = not path.exists()
        with path.open('a', encoding='utf-8') as f:
            if new: f.write('# Benchmark results\n\nAppended by `bench/bench_step.py`; see bench/README.md.\n')
            f.write(f'\n## {header}\n')
            for title, table, notes in sections:
                f.write(f'\n### {title}\n\n{table}\n\n{notes}\n')
        print(f'\nAppended to {path}')


if __name__ == '__main__':
    main()
