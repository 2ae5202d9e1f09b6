"""Does pretraining pay, and does ELECTRA beat masked-language modelling at equal compute (the paper's headline)?

For each objective: pretrain with `pretrain.py` for the same budget of training FLOPs (the FLOPs of `--budget_steps`
ELECTRA steps; each objective gets as many steps as that buys it), checkpoint along the way, finetune every
checkpoint and a randomly initialised model of the same size with `finetune.py` on the chosen GLUE tasks and seeds,
then write a table (bench/RESULTS.md) and a plot of the GLUE dev score against pretraining compute (bench/learning.png,
one line per objective, random init as the floor).

    python bench/learning.py                      # the CPU profile: ELECTRA vs MLM, tiny, about an hour on 2 cores
    python bench/learning.py --profile cpu-hour   # the five objectives, an hour of pretraining each, with intervals
    python bench/learning.py --profile gpu        # ELECTRA-Small on a GPU: hours
    python bench/learning.py --objectives electra,electra-15,replace-mlm,mlm --seeds 5 --logger csv,mlflow

Each row's score is the average over tasks of the task's median dev score (over finetuning seeds, and pretraining
seeds where there are several), with a 95% bootstrap interval: finetuning seeds are resampled within each pretraining
run, and pretraining runs among themselves. The differences ELECTRA - MLM and ELECTRA - random init get intervals
the same way (the two rows resampled independently).

Everything goes under --out_dir; runs that finished are reused, so a stopped study picks up where it was (the
pretraining runs resume from their newest checkpoint, the finetuning runs from runs.csv). FLOPs are counted by
torch's FlopCounterMode on the real step (matrix products and attention), so the budget is the same on any machine.
"""
import argparse
import json
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
    # 2 cores, hours: the five objectives with the CPU recipe (tiny, rope, its own 8,192-word vocabulary, 25% masked,
    # lr 2e-3, no dropout; at 32 x 128 rather than 64 x 64, GLUE's length), the FLOPs of 24,000 ELECTRA steps each
    # (about an hour on 2 cores), two pretraining seeds for ELECTRA and MLM; checkpoints at 25/50/100%, each and a
    # random init of the same model finetuned on CoLA, MRPC, STS-B and RTE with each task's epochs x 3 seeds
    'cpu-hour': dict(size='tiny', position='rope', tokenizer='train', vocab_size=8192, mask_prob=0.25, dropout=0.0,
                     budget_steps=24_000, batch_size=32, max_length=128, lr=2e-3, warmup_steps=1000,
                     fractions='0.25,0.5,1', tasks='cola,mrpc,stsb,rte', epochs=0, seeds=3, precision='auto',
                     objectives='electra,electra-15,replace-mlm,all-tokens-mlm,mlm', pretrain_seeds=2,
                     seeded='electra,mlm'),
    # one GPU: ELECTRA-Small at the paper's batch and lr, 100k steps (a tenth of the paper's 1M), all of GLUE
    'gpu': dict(size='small', budget_steps=100_000, batch_size=128, max_length=128, lr=5e-4, warmup_steps=10_000,
                fractions='0.125,0.25,0.5,1', tasks='all', epochs=0, seeds=3, precision='auto'),
}


DEFAULTS = dict(objectives='electra,mlm', pretrain_seeds=1, seeded='')  # where a profile does not say
PRETRAIN_OPTIONS = ('position', 'tokenizer', 'vocab_size', 'mask_prob', 'dropout')  # passed on where given


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--profile', default='cpu', choices=list(PROFILES), help='a group of the settings below')
    p.add_argument('--objectives', help=f"comma list among {', '.join(OBJECTIVES)} (default: electra,mlm)")
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
    p.add_argument('--seed', type=int, default=0, help='the first pretraining seed')
    p.add_argument('--pretrain_seeds', type=int, help='pretraining runs (seeds seed, seed+1, ...) of the objectives in '
                   '--seeded; the others get one (default 1)')
    p.add_argument('--seeded', help='comma list of the objectives pretrained --pretrain_seeds times, or N times for '
                   'one given as objective:N, e.g. electra:3,mlm (default: none)')
    p.add_argument('--position', help="pretraining's --position (default: pretrain.py's)")
    p.add_argument('--tokenizer', help="pretraining's --tokenizer, e.g. 'train' (default: bundled)")
    p.add_argument('--vocab_size', type=int, help='with --tokenizer train: its size')
    p.add_argument('--mask_prob', type=float, help="pretraining's --mask_prob (default: the paper's 0.15)")
    p.add_argument('--dropout', type=float, help="pretraining's --dropout (default: the paper's 0.1)")
    p.add_argument('--logger', default='csv', help='loggers of every run (csv, tensorboard, neptune, mlflow)')
    p.add_argument('--out_dir', default=str(ROOT / 'bench' / 'out' / 'learning'), help='checkpoints and logs')
    p.add_argument('--results', default=str(ROOT / 'bench' / 'RESULTS.md'), help='the table is appended here')
    p.add_argument('--plot', default=str(ROOT / 'bench' / 'learning.png'), help='the plot goes here')
    args = p.parse_args(argv)
    for k, v in {**DEFAULTS, **PROFILES[args.profile]}.items():
        if getattr(args, k) is None: setattr(args, k, v)
    args.corpus = args.corpus or (str(SHARED / 'corpus') if (SHARED / 'corpus').is_dir() else 'bundled')
    args.glue_dir = args.glue_dir or (str(SHARED / 'glue') if (SHARED / 'glue').is_dir() else 'bundled')
    args.objectives = [o.strip() for o in args.objectives.split(',') if o.strip()]
    for o in args.objectives:
        if o not in OBJECTIVES: p.error(f"unknown objective '{o}'; objectives: {', '.join(OBJECTIVES)}")
    seeded = {}  # objective: its number of pretraining runs
    for entry in (e.strip() for e in args.seeded.split(',') if e.strip()):
        name, _, count = entry.partition(':')
        if name not in OBJECTIVES: p.error(f"--seeded: unknown objective '{name}'; objectives: {', '.join(OBJECTIVES)}")
        if count and not (count.isdigit() and int(count) > 0):
            p.error(f"--seeded: '{entry}' needs a number of runs, 1 or more, after the colon, e.g. {name}:3")
        seeded[name] = int(count) if count else args.pretrain_seeds
    args.seeded = seeded
    return args


def plan(args):
    """Per objective: FLOPs per step and the steps the budget buys (a multiple of 10, so that checkpoints land on
    whole steps)."""
    from _utils.pretraining import build_electra, step_flops
    from _utils.text import load_tokenizer, train_tokenizer
    # the runs' own vocabulary (its size decides the output layers' FLOPs), masking and positions
    tokenizer = (train_tokenizer(args.corpus, args.vocab_size or 30_522) if args.tokenizer == 'train'
                 else load_tokenizer(args.tokenizer or 'bundled'))
    options = {k: getattr(args, k) for k in ('mask_prob', 'position') if getattr(args, k) is not None}
    flops = {o: step_flops(build_electra(args.size, tokenizer, max_length=args.max_length, objective=o, **options),
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


def pretraining_seeds(args, objective):
    """The pretraining seeds of `objective`: as many as --seeded gives it (objective:N, or --pretrain_seeds), else
    one."""
    return [args.seed + i for i in range(args.seeded.get(objective, 1))]


def pretrain(args, objective, steps, out, seed=None):
    """Pretrain `objective` for `steps` (resuming a stopped run); {fraction: checkpoint path}."""
    from _utils.checkpoint import newest_checkpoint
    seed = args.seed if seed is None else seed
    name = f'{objective}-{args.size}'
    ckpts = out / 'checkpoints'
    final = ckpts / f'{name}_seed{seed}_100pct.pth'
    if not final.exists():
        # this seed's own newest checkpoint, by path (seeds of one run name share the checkpoint folder)
        mine = f'{name}_seed{seed}_*.pth'
        resume = ['--resume', newest_checkpoint(ckpts, mine)] if list(ckpts.glob(mine)) else []
        extra = [a for k in PRETRAIN_OPTIONS if getattr(args, k) is not None for a in (f'--{k}', getattr(args, k))]
        warmup = round(args.warmup_steps * steps / args.budget_steps)
        run([sys.executable, 'pretrain.py', '--preset', 'none', '--size', args.size, '--objective', objective,
             '--corpus', args.corpus, '--max_steps', steps, '--batch_size', args.batch_size,
             '--max_length', args.max_length, '--lr', args.lr, '--warmup_steps', warmup, '--seed', seed,
             '--precision', args.precision, '--checkpoint_fractions', args.fractions, '--save_every', 500,
             '--keep_last', 1, '--run_name', name, '--checkpoint_dir', ckpts, '--log_dir', out / 'logs' / 'pretrain',
             '--logger', args.logger, *extra, *resume], out / 'logs' / f'{name}_seed{seed}.log')
    fractions = [float(f) for f in args.fractions.split(',')]
    return {f: ckpts / f'{name}_seed{seed}_{checkpoint_label(f)}.pth' for f in fractions}


def random_checkpoint(model_ckpt, out, seed=0):
    """A randomly initialised checkpoint with the architecture, positions and tokenizer of `model_ckpt` (the same
    model the pretrained rows finetune, before any pretraining): the random-init row."""
    import torch

    from _utils.checkpoint import load_checkpoint
    from _utils.electra import models_for
    from _utils.files import atomic_save
    from transformers import ElectraConfig
    path = out / 'checkpoints' / f'random-init_seed{seed}.pth'
    if path.exists(): return path
    ckpt = load_checkpoint(model_ckpt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen, disc = models_for(ElectraConfig.from_dict(ckpt['generator_config']),
                               ElectraConfig.from_dict(ckpt['discriminator_config']), 'electra')
    state = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}
    random = {k: v for k, v in ckpt.items() if k not in ('optimizer', 'rng')}
    random.update(step=0, objective='electra', generator=state(gen), discriminator=state(disc))
    atomic_save(random, path)
    return path


def checkpoint_label(fraction):
    """The file-name label pretrain.py gives a checkpoint at `fraction` of the run ('25pct', '12.5pct', '100pct')."""
    from _utils.callbacks import fraction_label
    return fraction_label(fraction)


def finetune(args, model, group, out):
    """Finetune `model` on the tasks, `args.seeds` runs each; returns {task: [dev score of each run]}."""
    from _utils.glue_runs import read_runs
    logs = out / 'logs' / 'finetune'  # beside logs/pretrain: one MLflow store, <out>/logs/mlruns, for both
    cmd = [sys.executable, 'finetune.py', '--preset', 'none', '--model', model, '--size', args.size,
           '--glue_dir', args.glue_dir, '--tasks', args.tasks, '--n_runs', args.seeds, '--group_name', group,
           '--precision', args.precision, '--log_dir', logs, '--checkpoint_dir', out / 'finetuned',
           '--output_dir', out / 'test_outputs', '--save_models', 'false', '--logger', args.logger]
    if args.epochs: cmd += ['--epochs', args.epochs]
    runs_csv = logs / group / 'runs.csv'
    run(cmd + (['--resume', 'true'] if runs_csv.exists() else []), out / 'logs' / f'finetune-{group}.log')
    scores = {}
    for result in sorted(read_runs(runs_csv), key=lambda r: r.run):
        if result.run < args.seeds: scores.setdefault(result.task, []).append(result.score)
    return scores


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out_dir) / args.profile
    t0 = time.time()
    budget, steps = plan(args)
    print(f'Budget: {budget:.3g} training FLOPs (= {args.budget_steps:,} ELECTRA-{args.size} steps of '
          f'{args.batch_size} x {args.max_length}); '
          + ', '.join(f"{o} {s['steps']:,} steps x {len(pretraining_seeds(args, o))} seed(s)" for o, s in steps.items()))
    rows = []  # one per pretraining run and checkpoint: objective, seed, fraction, steps, flops, scores
    # every objective's first seed before any second one, so that a study run in parts fills every row early
    for i in range(max(len(pretraining_seeds(args, o)) for o in steps)):
        for objective, s in steps.items():
            if i >= len(pretraining_seeds(args, objective)): continue
            seed = pretraining_seeds(args, objective)[i]
            print(f'Pretraining {objective} (seed {seed})...', flush=True)
            for fraction, ckpt in pretrain(args, objective, s['steps'], out, seed).items():
                print(f'Finetuning {ckpt.name}...', flush=True)
                rows.append(dict(objective=objective, seed=seed, fraction=fraction,
                                 steps=round(s['steps'] * fraction), flops=s['step_flops'] * s['steps'] * fraction,
                                 scores=finetune(args, ckpt, ckpt.stem, out)))
            if len(rows) == len(args.fractions.split(',')):  # the first run: the random init is its model, untrained
                print('Finetuning a random initialisation of the same model...', flush=True)
                rows.append(dict(objective='random init', seed=0, fraction=0.0, steps=0, flops=0.0,
                                 scores=finetune(args, random_checkpoint(ckpt, out), 'random-init', out)))
    report(args, budget, rows, (time.time() - t0) / 60)


# ---------------------------------------------------------------------------------------------------------------
# The comparison and its uncertainty
# ---------------------------------------------------------------------------------------------------------------
def row_score(runs):
    """A row's GLUE score: the average over tasks of each task's median dev score over all its runs. `runs`: one
    {task: [score of each finetuning seed]} per pretraining run."""
    import numpy as np
    return float(np.mean([np.median([x for r in runs for x in r[t]]) for t in runs[0]]))


def bootstrap(runs, n=4000, seed=0):
    """`n` resampled row scores: the pretraining runs resampled among themselves (where there are several), then
    each one's finetuning seeds within it, per task (with replacement, as many as there were)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    draws = np.empty(n)
    for i in range(n):
        picked = [runs[k] for k in rng.integers(len(runs), size=len(runs))]
        draws[i] = row_score([{t: rng.choice(r[t], size=len(r[t])) for t in r} for r in picked])
    return draws


def interval(draws):
    """The 95% percentile interval of bootstrap draws."""
    import numpy as np
    return tuple(float(v) for v in np.percentile(draws, [2.5, 97.5]))


def grouped(rows):
    """{(objective, fraction): [scores of each pretraining seed]} in the rows' order."""
    groups = {}
    for r in rows: groups.setdefault((r['objective'], r['fraction']), []).append(r)
    return groups


def differences(groups, n=4000):
    """ELECTRA - MLM at each fraction both have, and ELECTRA (100%) - random init: (label, difference, interval)."""
    out = []
    electra = {f: g for (o, f), g in groups.items() if o == 'electra'}
    pairs = [(f'electra - mlm at {f:.0%}', electra[f], groups[('mlm', f)]) for f in electra if ('mlm', f) in groups]
    if ('random init', 0.0) in groups and electra:
        top = max(electra)
        pairs.append((f'electra ({top:.0%}) - random init', electra[top], groups[('random init', 0.0)]))
    for label, a, b in pairs:
        runs_a, runs_b = [r['scores'] for r in a], [r['scores'] for r in b]
        draws = bootstrap(runs_a, n, seed=1) - bootstrap(runs_b, n, seed=2)
        out.append((label, row_score(runs_a) - row_score(runs_b), interval(draws)))
    return out


def report(args, budget, rows, minutes):
    import numpy as np
    import torch

    from _utils.glue import TASKS
    groups = grouped(rows)
    tasks = [t for t in TASKS if t in rows[0]['scores']]
    head = ('| objective | pretraining runs | steps | pretraining FLOPs | ' + ' | '.join(tasks)
            + ' | GLUE average | 95% interval |')
    lines, table = [head, '|' + '---|' * (len(tasks) + 6)], []
    for (objective, fraction), group in groups.items():
        runs = [r['scores'] for r in group]
        medians = ' | '.join(f'{np.median([x for r in runs for x in r[t]]):.1f}' for t in tasks)
        score, (low, high) = row_score(runs), interval(bootstrap(runs))
        seeds = ', '.join(str(r['seed']) for r in group) if objective != 'random init' else '-'
        lines.append(f"| {objective} | {seeds} | {group[0]['steps']:,} | {group[0]['flops']:.3g} | {medians} | "
                     f'{score:.1f} | {low:.1f} - {high:.1f} |')
        table.append(dict(objective=objective, fraction=fraction, flops=group[0]['flops'], score=score,
                          low=low, high=high))
    diffs = differences(groups)
    lines += ['', '| difference | GLUE average | 95% interval | beyond the interval? |', '|---|---|---|---|']
    lines += [f"| {label} | {d:+.1f} | {lo:+.1f} - {hi:+.1f} | {'yes' if lo > 0 or hi < 0 else 'no'} |"
              for label, d, (lo, hi) in diffs]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f'{cpu_name()}, {os.cpu_count()} cores'
    options = ', '.join(f'{k} {getattr(args, k)}' for k in PRETRAIN_OPTIONS if getattr(args, k) is not None)
    section = (f'\n## {date.today()}: does pretraining pay? `python bench/learning.py --profile {args.profile}`\n\n'
               f'{args.size}, batch {args.batch_size} x {args.max_length}, lr {args.lr:g}'
               + (f', {options}' if options else '') + f', corpus `{shown_path(args.corpus)}`; budget {budget:.3g} '
               f'training FLOPs (the FLOPs of {args.budget_steps:,} ELECTRA steps; FlopCounterMode) per pretraining '
               f'run; GLUE `{shown_path(args.glue_dir)}`, {args.seeds} finetuning seeds per task and checkpoint, '
               + (f'{args.epochs} epochs' if args.epochs else "each task's epochs")
               + ' (finetune.py defaults for the size otherwise). A task\'s score is its median over all runs (every '
               'pretraining run x finetuning seed); the GLUE average is their mean; the intervals are 95% bootstrap '
               f'intervals (finetuning seeds resampled within each pretraining run, pretraining runs among '
               f'themselves). {device}, {minutes:.0f} minutes.\n\n'
               + '\n'.join(lines) + f'\n\n![GLUE dev score against pretraining compute]({Path(args.plot).name})\n')
    with open(args.results, 'a') as f: f.write(section)
    plot(table, args.plot, f'{args.size}, {args.seeds} seeds, {", ".join(tasks)}')
    (Path(args.out_dir) / args.profile / 'results.json').write_text(json.dumps(rows, indent=1))
    print(section)
    return table, diffs


def shown_path(path):
    """A corpus or GLUE folder as the report shows it: relative to the project folder ('../shared/data/corpus'),
    names such as 'bundled' as they are."""
    return os.path.relpath(path, ROOT) if os.path.isabs(str(path)) else str(path)


def cpu_name():
    import platform
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def plot(table, path, subtitle):
    """The GLUE average against pretraining compute, one line per objective with its intervals, random init as a
    band."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    objectives = list(dict.fromkeys(r['objective'] for r in table if r['objective'] != 'random init'))
    width = max((r['flops'] for r in table), default=0) * 0.012  # each objective a little apart, so its bars show
    for i, objective in enumerate(objectives):
        pts = sorted((r['flops'], r['score'], r['low'], r['high']) for r in table if r['objective'] == objective)
        x, y = [p[0] + (i - (len(objectives) - 1) / 2) * width for p in pts], [p[1] for p in pts]
        ax.errorbar(x, y, yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]], marker='o', capsize=3,
                    label=objective)
    for r in (r for r in table if r['objective'] == 'random init'):
        ax.axhline(r['score'], color='grey', linestyle='--', label='random init')
        ax.axhspan(r['low'], r['high'], color='grey', alpha=0.15)
    ax.set_xlabel('pretraining compute (training FLOPs)')
    ax.set_ylabel('GLUE dev score (mean of task medians)')
    ax.set_title(f'Score against pretraining compute, 95% bootstrap intervals\n{subtitle}', fontsize=10)
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))  # beside the axes: no bar hidden
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == '__main__':
    main()
