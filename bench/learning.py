"""Does pretraining pay, and does ELECTRA beat masked-language modelling at equal compute (the paper's headline)?

For each objective: pretrain with `pretrain.py` for the same budget of training FLOPs (the FLOPs of `--budget_steps`
ELECTRA steps; each objective gets as many steps as that buys it), checkpoint along the way, finetune every
checkpoint and a randomly initialised model of the same size with `finetune.py` on the chosen GLUE tasks and seeds,
then write a table (bench/RESULTS.md) and a plot of the GLUE dev score against pretraining compute (bench/learning.png,
one line per objective, random init as the floor).

    python bench/learning.py                      # the CPU profile: ELECTRA vs MLM, tiny, about an hour on 2 cores
    python bench/learning.py --profile gpu        # ELECTRA-Small on a GPU: hours
    python bench/learning.py --objectives electra,electra-15,replace-mlm,mlm --seeds 5 --logger csv,mlflow

Everything goes under --out_dir; runs that finished are reused, so a stopped study picks up where it was (the
pretraining runs resume from their newest checkpoint, the finetuning runs from runs.csv). FLOPs are counted by
torch's FlopCounterMode on the real step (matrix products and attention), so the budget is the same on any machine.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _utils.objectives import OBJECTIVES  # noqa: E402  (light: no torch)

SHARED = ROOT.parent / 'shared' / 'data'
PROFILES = {
    # 2 cores: tiny, ~40 min of pretraining for both objectives together, three small GLUE tasks x 3 seeds
    # 2 cores: tiny, ELECTRA vs MLM at 2,000 ELECTRA steps of 32 x 128 (~15 min of pretraining together), two
    # checkpoints each and a random init finetuned on three small GLUE tasks for 3 epochs x 3 seeds (~50 min)
    'cpu': dict(size='tiny', budget_steps=2000, batch_size=32, max_length=128, lr=1e-3, warmup_steps=200,
                fractions='0.5,1', tasks='cola,mrpc,stsb', epochs=3, seeds=3, precision='auto'),
    # one GPU: ELECTRA-Small at the paper's batch and lr, 100k steps (a tenth of the paper's 1M), all of GLUE
    'gpu': dict(size='small', budget_steps=100_000, batch_size=128, max_length=128, lr=5e-4, warmup_steps=10_000,
                fractions='0.125,0.25,0.5,1', tasks='all', epochs=0, seeds=3, precision='auto'),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--profile', default='cpu', choices=list(PROFILES), help='a group of the settings below')
    p.add_argument('--objectives', default='electra,mlm', help=f"comma list among {', '.join(OBJECTIVES)}")
    p.add_argument('--size', help='model size (profile: tiny on cpu, small on gpu)')
    p.add_argument('--budget_steps', type=int, help='the budget: the training FLOPs of this many ELECTRA steps')
    p.add_argument('--batch_size', type=int)
    p.add_argument('--max_length', type=int)
    p.add_argument('--lr', type=float, help='peak pretraining lr, the same for every objective')
    p.add_argument('--warmup_steps', type=int, help='warmup of the ELECTRA run; the others get the same fraction')
    p.add_argument('--fractions', help='checkpoints at these fractions of the budget, each one finetuned')
    p.add_argument('--corpus', default=None, help=f'pretraining text (default: {SHARED / "corpus"} if present, '
                   'else the bundled sample)')
    p.add_argument('--glue_dir', default=None, help=f'GLUE folder (default: {SHARED / "glue"} if present, '
                   'else the bundled sample)')
    p.add_argument('--tasks', help="comma list of GLUE tasks, or 'all'")
    p.add_argument('--seeds', type=int, help='finetuning runs (seeds) per task and checkpoint')
    p.add_argument('--epochs', type=int, help="finetuning epochs of every task; 0: each task's own (3; RTE, STS-B 10)")
    p.add_argument('--precision', help='auto, fp32, bf16 or fp16 (pretraining and finetuning)')
    p.add_argument('--seed', type=int, default=0, help='pretraining seed')
    p.add_argument('--logger', default='csv', help='loggers of every run (csv, tensorboard, neptune, mlflow)')
    p.add_argument('--out_dir', default=str(ROOT / 'bench' / 'out' / 'learning'), help='checkpoints and logs')
    p.add_argument('--results', default=str(ROOT / 'bench' / 'RESULTS.md'), help='the table is appended here')
    p.add_argument('--plot', default=str(ROOT / 'bench' / 'learning.png'), help='the plot goes here')
    args = p.parse_args(argv)
    for k, v in PROFILES[args.profile].items():
        if getattr(args, k) is None: setattr(args, k, v)
    args.corpus = args.corpus or (str(SHARED / 'corpus') if (SHARED / 'corpus').is_dir() else 'bundled')
    args.glue_dir = args.glue_dir or (str(SHARED / 'glue') if (SHARED / 'glue').is_dir() else 'bundled')
    args.objectives = [o.strip() for o in args.objectives.split(',') if o.strip()]
    for o in args.objectives:
        if o not in OBJECTIVES: p.error(f"unknown objective '{o}'; objectives: {', '.join(OBJECTIVES)}")
    return args


def plan(args):
    """Per objective: FLOPs per step and the steps the budget buys (a multiple of 10, so that checkpoints land on
    whole steps)."""
    from _utils.pretraining import build_electra, step_flops
    from _utils.text import load_tokenizer
    tokenizer = load_tokenizer('bundled')
    flops = {o: step_flops(build_electra(args.size, tokenizer, max_length=args.max_length, objective=o),
                           args.batch_size, args.max_length) for o in {'electra', *args.objectives}}
    budget = flops['electra'] * args.budget_steps
    return budget, {o: dict(step_flops=flops[o], steps=max(10, round(budget / flops[o] / 10) * 10))
                    for o in args.objectives}


def run(cmd, log):
    """A command of the study, its output to `log`; a failure stops the study with the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print('  $', ' '.join(str(c) for c in cmd), f'> {log}', flush=True)
    with open(log, 'a') as f:
        res = subprocess.run([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode:
        tail = log.read_text(errors='replace').splitlines()[-5:]
        raise SystemExit(f'failed ({res.returncode}): ' + ' '.join(map(str, cmd)) + '\n' + '\n'.join(tail))


def pretrain(args, objective, steps, out):
    name = f'{objective}-{args.size}'
    ckpts = out / 'checkpoints'
    final = ckpts / f'{name}_seed{args.seed}_100pct.pth'
    if not final.exists():
        resume = ['--resume', 'latest'] if list(ckpts.glob(f'{name}_seed{args.seed}_*.pth')) else []
        warmup = round(args.warmup_steps * steps / args.budget_steps)
        run([sys.executable, 'pretrain.py', '--preset', 'none', '--size', args.size, '--objective', objective,
             '--corpus', args.corpus, '--max_steps', steps, '--batch_size', args.batch_size,
             '--max_length', args.max_length, '--lr', args.lr, '--warmup_steps', warmup, '--seed', args.seed,
             '--precision', args.precision, '--checkpoint_fractions', args.fractions, '--save_every', 0,
             '--run_name', name, '--checkpoint_dir', ckpts, '--log_dir', out / 'logs' / 'pretrain',
             '--logger', args.logger, *resume], out / 'logs' / f'{name}.log')
    fractions = [float(f) for f in args.fractions.split(',')]
    return {f: ckpts / f'{name}_seed{args.seed}_{checkpoint_label(f)}.pth' for f in fractions}


def checkpoint_label(fraction):
    """The file-name label pretrain.py gives a checkpoint at `fraction` of the run ('25pct', '12.5pct', '100pct')."""
    from _utils.callbacks import fraction_label
    return fraction_label(fraction)


def finetune(args, model, group, out):
    """Finetune `model` on the tasks, `args.seeds` runs each; returns {task: median dev score}."""
    from _utils.glue_runs import read_runs, summarize
    logs = out / 'logs' / 'finetune'  # beside logs/pretrain: one MLflow store, <out>/logs/mlruns, for both
    cmd = [sys.executable, 'finetune.py', '--preset', 'none', '--model', model, '--size', args.size,
           '--glue_dir', args.glue_dir, '--tasks', args.tasks, '--n_runs', args.seeds, '--group_name', group,
           '--precision', args.precision, '--log_dir', logs, '--checkpoint_dir', out / 'finetuned',
           '--output_dir', out / 'test_outputs', '--save_models', 'false', '--logger', args.logger]
    if args.epochs: cmd += ['--epochs', args.epochs]
    runs_csv = logs / group / 'runs.csv'
    run(cmd + (['--resume', 'true'] if runs_csv.exists() else []), out / 'logs' / f'finetune-{group}.log')
    table, average = summarize(read_runs(runs_csv))
    scores = {task: float(row['median']) for task, row in table.iterrows() if task != 'GLUE avg'}
    return scores


def average(scores):
    return sum(scores.values()) / len(scores) if scores else math.nan


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out_dir) / args.profile
    t0 = time.time()
    budget, steps = plan(args)
    print(f'Budget: {budget:.3g} training FLOPs (= {args.budget_steps:,} ELECTRA-{args.size} steps of '
          f'{args.batch_size} x {args.max_length}); '
          + ', '.join(f"{o} {s['steps']:,} steps" for o, s in steps.items()))
    rows = []  # (objective, fraction, steps, FLOPs, {task: median})
    for objective, s in steps.items():
        print(f'Pretraining {objective}...', flush=True)
        for fraction, ckpt in pretrain(args, objective, s['steps'], out).items():
            print(f'Finetuning {ckpt.name}...', flush=True)
            scores = finetune(args, ckpt, ckpt.stem, out)
            rows.append((objective, fraction, round(s['steps'] * fraction), s['step_flops'] * s['steps'] * fraction,
                         scores))
    print('Finetuning a random initialisation...', flush=True)
    floor = finetune(args, 'random', f'random-{args.size}', out)
    rows.append(('random init', 0.0, 0, 0.0, floor))
    minutes = (time.time() - t0) / 60
    report(args, budget, rows, minutes)


def report(args, budget, rows, minutes):
    import torch
    tasks = list(rows[-1][4])
    head = '| objective | steps | pretraining FLOPs | ' + ' | '.join(tasks) + ' | average |'
    lines = [head, '|' + '---|' * (len(tasks) + 4)]
    for objective, fraction, steps, flops, scores in rows:
        cells = ' | '.join(f'{scores.get(t, math.nan):.1f}' for t in tasks)
        lines.append(f'| {objective} | {steps:,} | {flops:.3g} | {cells} | {average(scores):.1f} |')
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f'{cpu_name()}, {os.cpu_count()} cores'
    section = (f'\n## {date.today()}: does pretraining pay? `python bench/learning.py --profile {args.profile}`\n\n'
               f'{args.size}, batch {args.batch_size} x {args.max_length}, lr {args.lr:g}, pretraining seed '
               f'{args.seed}, corpus `{args.corpus}`; budget {budget:.3g} training FLOPs (the FLOPs of '
               f'{args.budget_steps:,} ELECTRA steps; FlopCounterMode); GLUE `{args.glue_dir}`, median dev score of '
               f'{args.seeds} seeds per task, ' + (f'{args.epochs} epochs' if args.epochs else "each task's epochs")
               + f' (finetune.py defaults for the size otherwise). {device}, {minutes:.0f} minutes.\n\n'
               + '\n'.join(lines) + f'\n\n![GLUE dev score against pretraining compute]({Path(args.plot).name})\n')
    with open(args.results, 'a') as f: f.write(section)
    plot(rows, tasks, args.plot, f'{args.size}, {args.seeds} seeds, {", ".join(tasks)}')
    (Path(args.out_dir) / args.profile / 'results.json').write_text(json.dumps(
        [dict(objective=o, fraction=fr, steps=st, flops=fl, scores=sc) for o, fr, st, fl, sc in rows], indent=1))
    print(section)


def cpu_name():
    import platform
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def plot(rows, tasks, path, subtitle):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for objective in dict.fromkeys(r[0] for r in rows if r[0] != 'random init'):
        pts = sorted((r[3], average(r[4])) for r in rows if r[0] == objective)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=objective)
    floor = [average(r[4]) for r in rows if r[0] == 'random init']
    if floor: ax.axhline(floor[0], color='grey', linestyle='--', label='random init')
    ax.set_xlabel('pretraining compute (training FLOPs)')
    ax.set_ylabel('GLUE dev score (average of task medians)')
    ax.set_title(f'Score against pretraining compute\n{subtitle}', fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == '__main__':
    main()
