"""A set of finetuning runs: one plan per learning rate (one rate, or a search over several as in TUPE's protocol),
every task x seed of each plan, and per task the rate whose median is best (with one rate: its own).

    MyConfig --lr / --lrs -> finetuning.recipes_for (one Recipe per rate) -> `plan_rates` (a RatePlan per recipe: its
    folders, settings, finished runs) -> `finetune_plans` (glue_runs.finetune_task per task) -> `best_rate_results`
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .glue import TASKS
from .glue_models import save_finetuned
from .glue_runs import (RunsLog, finetune_task, finished_runs, format_table, run_settings, save_summary, saved_best,
                        summarize, is_missing)
from .files import say
from .glue_scores import glue_average


@dataclass
class RatePlan:
    """Where one learning rate's runs go and what of them is done: with one rate, the group's own folders; in a
    search, a sub-folder per rate (`lr-3e-05`), each with its runs.csv, settings.json and best runs."""
    recipe: object           # the Recipe of these runs: its lr is the plan's
    log_dir: Path
    model_dir: Path
    settings: dict           # `run_settings`: --resume checks them per rate
    finished: dict           # `finished_runs` with --resume, else {}

    @property
    def lr(self): return self.recipe.lr


def rate_folder(lr):
    return f'lr-{lr:g}'


def plan_rates(recipes, log_dir, model_dir, pretrained, source, dev_fraction, resume=False):
    """One RatePlan per Recipe of `recipes` (`finetuning.recipes_for`: one per learning rate; one recipe: the
    group's own folders, as without a search)."""
    plans = []
    for recipe in recipes:
        sub = rate_folder(recipe.lr) if len(recipes) > 1 else ''
        settings = run_settings(pretrained, recipe, source, dev_fraction)
        plans.append(RatePlan(recipe, Path(log_dir) / sub, Path(model_dir) / sub, settings,
                              finished_runs(Path(log_dir) / sub, settings, recipe) if resume else {}))
    return plans


def finetune_plans(plans, data, pretrained, seeds, precision='fp32', device=torch.device('cpu'), resume=False,
                   save_models=True, loggers=('csv', 'tensorboard'), log_every=50, config=None):
    """Every plan's runs: each task of `data` x `seeds`, {lr: {task: TaskResult}}. Each plan's epochs go to its
    runs.csv (appended with `resume`), each task's best run so far to <plan.model_dir>/<task>.pth (`save_models`).
    Ctrl-C stops it with one line on how to resume: the finished runs are on disk already."""
    by_rate, name, runs_log = {}, 'the first task', None
    try:
        for plan in plans:
            runs_log = RunsLog(plan.log_dir / 'runs.csv', append=resume, settings=plan.settings)
            say(f"lr {plan.lr:g}: every epoch's dev metrics -> {runs_log.path}{' (appended)' if resume else ''}")
            results = by_rate[plan.lr] = {}
            for name, task_data in data.items():
                done, best_file = plan.finished.get(name, {}), plan.model_dir / f'{name}.pth'
                save = (lambda run, path=best_file: save_finetuned(run, pretrained, path)) if save_models else None
                results[name] = finetune_task(task_data, pretrained, plan.recipe, seeds, runs_log, precision, device,
                                              log_root=plan.log_dir, loggers=loggers, log_every=log_every,
                                              config=config, finished=done, best=saved_best(best_file, done),
                                              on_best=save)
    except KeyboardInterrupt:
        where = runs_log.path if runs_log is not None else plans[0].log_dir / 'runs.csv'
        raise SystemExit(f'\ninterrupted during {name}: the finished runs are in {where}; run the same command with '
                         '--resume to train only the missing runs') from None
    return by_rate


def best_rate_results(plans, by_rate, n_runs, title, group_dir):
    """Each rate's summary (printed, saved in its folder) and, in a search, TUPE's choice per task: the rate with
    the best median (the search table printed and saved in `group_dir`). Returns {task: TaskResult} of the chosen
    rates (one rate: its own) and the last summary table."""
    runs_by_rate = {lr: [run for result in results.values() for run in result.runs] for lr, results in by_rate.items()}
    if not any(runs_by_rate.values()): raise SystemExit('every run failed (see above); nothing to summarize')
    table = None
    for plan in plans:
        if not runs_by_rate[plan.lr]: continue
        table, _ = summarize(runs_by_rate[plan.lr])
        if len(plans) > 1: print(f'lr {plan.lr:g}:')
        print(format_table(table))
        files = save_summary(table, plan.log_dir, title=title + f', lr {plan.lr:g}' * (len(plans) > 1))
        say(f"Saved {', '.join(str(p) for p in files)}")
    best_rate = {name: plans[0].lr for name in by_rate[plans[0].lr]}
    if len(plans) > 1:
        search, best_rate = lr_search({lr: runs for lr, runs in runs_by_rate.items() if runs})
        print(f"Learning-rate search, the median of {n_runs} runs per rate:\n{formatted_search(search).to_string()}")
        say(f"Saved {', '.join(str(p) for p in save_search(search, group_dir, title=title + ' and rate'))}")
    return {name: by_rate[lr][name] for name, lr in best_rate.items() if name in by_rate[lr]}, table


def stop_if_failed(failed):
    """At the end of a set: runs that failed (one line each, printed as they failed) make the exit status say so."""
    if failed:
        raise SystemExit(f"{len(failed)} run{'s' * (len(failed) > 1)} failed (listed above); the others' results are "
                         'saved: run the same command with --resume to train only the missing runs')


def lr_search(runs_by_rate):
    """TUPE's choice: per task, each rate's median over its runs, and the rate with the best median (ties: the
    smaller rate). `runs_by_rate` {lr: RunResults or a runs.csv DataFrame}.

    Returns (DataFrame indexed by task: one 'lr <rate>' column per rate with its median, 'runs' per rate, 'best lr',
    'median' (the best rate's), then a 'GLUE avg' row over the chosen medians), {task: best lr}."""
    import pandas as pd
    medians = {lr: summarize(runs)[0] for lr, runs in runs_by_rate.items()}
    rates = sorted(medians)
    tasks = [t for t in TASKS if any(t in m.index for m in medians.values())]
    rows, best = {}, {}
    for task in tasks:
        scores = {lr: medians[lr].loc[task, 'median'] for lr in rates if task in medians[lr].index}
        best[task] = max(scores, key=lambda lr: (scores[lr], -lr))
        counts = sorted({int(medians[lr].loc[task, 'runs']) for lr in scores})
        rows[task] = dict(metric=TASKS[task].main_metric, runs='/'.join(map(str, counts)),
                          **{f'lr {lr:g}': scores.get(lr, math.nan) for lr in rates},
                          **{'best lr': f'{best[task]:g}', 'median': scores[best[task]]})
    table = pd.DataFrame.from_dict(rows, orient='index')
    table.index.name = 'task'
    if rows:
        average = glue_average({task: row['median'] for task, row in rows.items()})
        table.loc['GLUE avg'] = dict(metric='median', runs='', **{f'lr {lr:g}': math.nan for lr in rates},
                                     **{'best lr': 'per task', 'median': average.score})
    return table, best


def formatted_search(table):
    """The search table as shown (scores with 2 decimals)."""
    out = table.copy()
    for col in [c for c in out.columns if c.startswith('lr ') or c == 'median']:
        out[col] = out[col].map(lambda v: '' if is_missing(v) else f'{v:.2f}')
    return out


def save_search(table, out_dir, title=''):
    """search.csv and search.md in `out_dir` (the group's folder, above the rates' own)."""
    return save_summary(table, out_dir, title, name='search', formatted=formatted_search(table))
