#!/usr/bin/env python
"""Pretraining runs side by side at equal steps, from their metrics.csv: the generator's MLM loss and accuracy, the
discriminator's loss and AUC, each the mean over the logged steps of a window ending at the step (the last batch's
AUC alone is noisy). For comparisons such as `--position absolute` vs `tupe-r` at the same steps, batch and seed.

    python bench/compare_runs.py logs/pretrain/a_seed0 logs/pretrain/b_seed0 --every 1000 --window 500
"""
import argparse
import csv
import statistics
from pathlib import Path

COLUMNS = ('mlm_loss', 'gen_acc', 'disc_loss', 'disc_auc')


def read_metrics(run_dir):
    with open(Path(run_dir) / 'metrics.csv') as f:
        return [{k: float(v) for k, v in row.items() if v not in ('', None)} for row in csv.DictReader(f)]


def window_means(rows, step, window):
    """{column: mean over the rows with step in (step - window, step]}, or None when no row is there."""
    inside = [r for r in rows if step - window < r['step'] <= step]
    if not inside: return None
    return {c: statistics.fmean(r[c] for r in inside if c in r) for c in COLUMNS if any(c in r for r in inside)}


def comparison_table(runs, every, window):
    """Markdown: one row per step that every run reached, the runs' window means side by side."""
    last = min(int(max(r['step'] for r in rows)) for rows in runs.values())
    names = list(runs)
    header = ['step'] + [f'{name} {c}' for c in COLUMNS for name in names]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---:|' * len(header)]
    for step in range(every, last + 1, every):
        means = {name: window_means(rows, step, window) for name, rows in runs.items()}
        if any(m is None for m in means.values()): continue
        cells = [f'{step:,}'] + [f"{means[name].get(c, float('nan')):.4f}" for c in COLUMNS for name in names]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', help="run log folders (each with metrics.csv); name=folder to name one")
    p.add_argument('--every', type=int, default=1000, help='compare at every N steps')
    p.add_argument('--window', type=int, default=500, help='average the logged values over the last N steps')
    args = p.parse_args()
    runs = {}
    for spec in args.runs:
        name, _, folder = spec.rpartition('=')
        runs[name or Path(folder).name] = read_metrics(folder)
    print(comparison_table(runs, args.every, args.window))


if __name__ == '__main__':
    main()
