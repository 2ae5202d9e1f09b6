"""The runs of a finetuning set: every epoch's dev metrics in runs.csv as they arrive, --resume (finished runs
skipped, the settings checked), each task's best run saved, and the summary over runs (median, GLUE average)."""
import csv
import dataclasses
import json
import math
import numbers
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError, first_line
from .files import atomic_write, atomic_write_text, say, slug
from .finetuning import RunResult, best_row, finetune_run
from .glue import GLUE_AVERAGE_TASKS, TASKS, task_by_name
from .glue_scores import glue_average
from .glue_models import read_finetuned

METRIC_COLUMNS = ('acc', 'f1', 'mcc', 'spearman', 'pearson', 'mismatched_acc')


RUN_COLUMNS = ('task', 'run', 'seed', 'epoch', 'step', 'train_loss', 'main_metric', 'score', *METRIC_COLUMNS,
               'seconds')


RENAMED_SETTINGS = {'fixed_off_by_one': 'fix_layer_decay'}  # settings.json written by older versions
ADDED_SETTINGS = dict(adam_beta2=0.999, bias_correction=False,  # absent from older settings.json: what they ran with
                      validations_per_epoch=1, run_score='last')
SETTINGS_FILE = 'settings.json'  # beside runs.csv: what its runs were made with, checked by --resume


class RunsLog:
    """runs.csv: one row per (task, run, dev evaluation), appended and flushed as each evaluation ends, so a crash
    keeps the rows so far. A failing disk is reported once; the rows stay in `rows` and training goes on.

    A new set of runs moves an earlier runs.csv (and its settings.json) aside under its time stamp, never
    overwriting it; `append=True` (--resume) adds to it instead. `settings` (`run_settings`) go to settings.json.
    """

    def __init__(self, path, append=False, settings=None):
        self.path, self.rows, self.failed = Path(path), [], False
        settings_file = self.path.with_name(SETTINGS_FILE)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            earlier = self.path.exists() and self.path.stat().st_size > 0
            if append and earlier:
                _end_with_newline(self.path)  # a line cut short by a crash must not swallow the next row
            else:
                if earlier: _keep_aside(self.path, settings_file)
                with self.path.open('w', newline='') as f: csv.writer(f).writerow(RUN_COLUMNS)
            if settings is not None and not (append and earlier and settings_file.exists()):
                atomic_write_text(settings_file, json.dumps(settings, indent=1) + '\n')
        except OSError as e:
            self._fail(e)

    def _fail(self, e):
        if not self.failed: warnings.warn(f'cannot write {self.path} ({e}); results are kept in memory')
        self.failed = True

    def append(self, task, run, seed, row):
        task = task_by_name(task)
        full = dict(task=task.name, run=run, seed=seed, main_metric=task.main_metric, **row)
        self.rows.append(full)
        if self.failed: return
        try:
            with self.path.open('a', newline='') as f:
                csv.writer(f).writerow([_cell(full.get(c)) for c in RUN_COLUMNS])
        except OSError as e:
            self._fail(e)


def _cell(value):
    """A runs.csv cell. Numbers in full (repr: the shortest text that reads back as the same float), since --resume
    summarizes the finished runs from this file: rounded, a resumed set's GLUE average differed from an
    uninterrupted one's in the 4th decimal."""
    if value is None: return ''
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral): return repr(float(value))
    return value


def _keep_aside(*paths):
    """runs.csv -> runs.<time stamp>.csv (settings.json likewise, same stamp), never over an existing file."""
    stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(paths[0].stat().st_mtime))
    aside = lambda p, tag: p.with_name(f'{p.stem}.{tag}{p.suffix}')
    tag, n = stamp, 1
    while any(aside(p, tag).exists() for p in paths): tag, n = f'{stamp}-{n}', n + 1
    for p in paths:
        if p.exists(): p.rename(aside(p, tag))


def _end_with_newline(path):
    with open(path, 'rb+') as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b'\n': f.write(b'\n')


def run_settings(pretrained, recipe, source, dev_fraction):
    """What decides a run's numbers besides its seed: the model, the data and the recipe. Runs resumed into a set
    must have been made with the same, or their scores would not be comparable."""
    return dict(model=pretrained.source, data=str(source), dev_fraction=dev_fraction, **dataclasses.asdict(recipe))


def finished_runs(log_dir, settings, recipe, notify=say):
    """For --resume: the runs in `log_dir`/runs.csv that reached their last epoch, {task: {(run, seed): RunResult}}.

    Refuses in one line when they were made with other `settings` (see `run_settings`).
    """
    log_dir = Path(log_dir)
    runs_csv = log_dir / 'runs.csv'
    if not runs_csv.is_file() or runs_csv.stat().st_size == 0:
        notify(f'--resume: no runs in {runs_csv} yet: every run is trained')
        return {}
    _check_settings(log_dir / SETTINGS_FILE, settings, notify)
    finished = {}
    for run in read_runs(runs_csv, recipe.run_score):
        if run.final['epoch'] == recipe.epochs_for(run.task):
            finished.setdefault(run.task, {})[(run.run, run.seed)] = run
    return finished


def _check_settings(path, settings, notify):
    if not path.is_file():
        notify(f'--resume: no {path} (written by an older version?): the earlier runs\' settings are not checked')
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f'--resume: cannot read {path} ({e}); drop --resume to start a new set of runs') from None
    now = json.loads(json.dumps(settings))  # as saved: tuples become lists
    saved = {**{k: v for k, v in ADDED_SETTINGS.items() if k in now},
             **{RENAMED_SETTINGS.get(k, k): v for k, v in saved.items()}}
    changed = [f'{k} {saved.get(k)!r} -> {now.get(k)!r}' for k in [*now, *(k for k in saved if k not in now)]
               if saved.get(k) != now.get(k)]
    if changed:
        raise UserError(f"--resume: the runs in {path.parent} were made with other settings ({'; '.join(changed)}); "
                        'drop --resume to start a new set of runs there (the old runs.csv is kept aside), or give '
                        'a new --group_name')


def read_runs(path, run_score='last'):
    """runs.csv -> RunResults, one per (task, run, seed), scored by `run_score` (Recipe.run_score). A run redone
    after an interruption appends its epochs again, from the start: each such attempt is kept apart, and the run's
    history is the attempt that got furthest (the later one of equals), never epochs of two attempts mixed. A row
    cut short by a crash is ignored."""
    try:
        with open(path, newline='') as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f'--resume: cannot read {path} ({e}); drop --resume to start a new set of runs') from None
    missing = [c for c in RUN_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise UserError(f"--resume: {path} has no column {', '.join(missing)} (another version wrote it); drop "
                        '--resume to start a new set of runs')
    attempts_of = {}  # (task, run, seed) -> [{epoch: row} per attempt], in file order
    for row in rows:
        try:
            key = (task_by_name(row['task']).name, int(row['run']), int(row['seed']))
            epoch = _history_row(row)
        except (TypeError, ValueError, UserError):
            continue
        attempts = attempts_of.setdefault(key, [{}])
        if attempts[-1] and epoch['epoch'] <= max(attempts[-1]): attempts.append({})  # the run started again
        attempts[-1][epoch['epoch']] = epoch
    runs = []
    for key, attempts in attempts_of.items():
        epochs = max(reversed(attempts), key=max)  # the furthest; of equals, the latest
        runs.append(RunResult(*key, [epochs[e] for e in sorted(epochs)], run_score=run_score))
    return runs


def _history_row(row):
    """A runs.csv row -> the row `DevEvaluation` made: numbers, no empty metric cells. Raises if cut short."""
    if row.get('seconds') in (None, ''): raise ValueError('incomplete row')  # the last column: the row is whole
    epoch = float(row['epoch'])  # 2, or 1.5 with two evaluations per epoch
    out = dict(epoch=int(epoch) if epoch.is_integer() else epoch, step=int(row['step']),
               train_loss=float(row['train_loss']))
    out.update({m: float(row[m]) for m in METRIC_COLUMNS if row.get(m) not in (None, '')})
    out.update(score=float(row['score']), seconds=float(row['seconds']))
    return out


@dataclass
class TaskResult:
    task: str
    runs: list                  # RunResult of every finished run, earlier ones (--resume) included, without weights
    best: RunResult | None      # the best finished run that has weights; None when every run failed
    failed: list = field(default_factory=list)  # one line per run that failed


class EpochLine:
    """One printed line per run, growing as its evaluations end: 'CoLA run 1/3 (seed 0), mcc by epoch: 9.61 -9.00 1.41;
    train loss 0.6587, 0.9 s'. The run's evaluation (the last; with `best`, the best, named with its epoch) gives the
    other metrics in brackets: 'STS-B ..., spearman by 1/2 epoch: 22.01 31.32 30.38; best 31.32 at epoch 1 (pearson
    29.8); ...'."""

    def __init__(self, head, main_metric, verbose=True, best=False):
        self.head, self.main_metric, self.verbose, self.best, self.rows = head, main_metric, verbose, best, []

    def add(self, row):
        if self.verbose: print(('' if self.rows else self.head) + f" {row['score']:.2f}", end='', flush=True)
        self.rows.append(row)

    def end(self):
        if not (self.verbose and self.rows): return
        last, run = self.rows[-1], best_row(self.rows) if self.best else self.rows[-1]
        others = ', '.join(f'{k} {run[k]:.1f}' for k in METRIC_COLUMNS if k in run and k != self.main_metric)
        chosen = f"; best {run['score']:.2f} at epoch {run['epoch']:g}" if self.best else ''
        print(f"{chosen}{' (' + others + ')' if others else ''}; train loss {last['train_loss']:.4f}, "
              f"{sum(r['seconds'] for r in self.rows):.1f} s", flush=True)


def finetune_task(data, pretrained, recipe, seeds, runs_log=None, precision='fp32', device=torch.device('cpu'),
                  log_root=None, loggers=('csv', 'tensorboard'), log_every=50, config=None, verbose=True,
                  finished=None, best=None, on_best=None, notify=say):
    """One run per seed; every epoch's dev metrics go to `runs_log` as they arrive. Keeps the best run's weights:
    the best dev score, the earlier run of equals (`_rank`).

    `finished` {(run, seed): RunResult}: runs an earlier invocation finished (--resume): counted, not redone.
    `best`: the best of them with its weights (`saved_best`), for the new runs to beat. `on_best(run)` is called
    whenever a run becomes the best so far (the script saves it at once). When the best run of all has no weights
    (a kill while they were saved, --save_models false), it is trained again with its seed: the test predictions
    are then those of an uninterrupted set. A run that fails is reported in one line and the other runs go on.
    """
    task, finished = data.task, finished or {}
    if best is not None and (best.run, best.seed) not in set(enumerate(seeds)):
        best = None  # a run outside this plan (--n_runs or --seed changed): neither in the summary nor predicting
    done = [run for run, seed in enumerate(seeds) if (run, seed) in finished]
    if done:
        notify(f"{task.name}: run {', '.join(str(run + 1) for run in done)} of {len(seeds)} already finished "
               '(in runs.csv): skipped')
    runs, failed = {}, []  # runs {run: RunResult without weights}

    def train(run, seed):
        """The run's RunResult with its weights (its epochs in runs_log); None if it failed."""
        per = recipe.validations_per_epoch
        line = EpochLine(f"{task.name} run {run + 1}/{len(seeds)} (seed {seed}), {task.main_metric} by "
                         f"{'epoch' if per == 1 else f'1/{per} epoch'}:", task.main_metric, verbose,
                         best=recipe.run_score == 'best')

        def on_epoch(row):
            if runs_log is not None: runs_log.append(task, run, seed, row)
            line.add(row)
        log_dir = Path(log_root) / f'{slug(task.name)}_run{run}_seed{seed}' if log_root else None
        try:
            result = finetune_run(data, pretrained, recipe, seed, run, precision, device, log_dir, loggers, log_every,
                                  on_epoch, config)
        except Exception as e:  # out of memory, a bad batch...: the other runs and tasks still count
            line.end()
            failed.append(_run_failed(task, run, seed, len(seeds), e, log_dir))
            notify(failed[-1] + '; the other runs go on')
            return None
        line.end()
        runs[run] = RunResult(result.task, run, seed, result.history, run_score=result.run_score)
        return result

    def keep(result):
        nonlocal best
        best = result
        if on_best is None: return
        try: on_best(best)
        except (OSError, UserError) as e:  # a full disk, say: the run is kept in memory, training goes on
            notify(f'{task.name}: cannot save its best run so far ({e}); the test predictions still use it, a later '
                   '--resume trains it again')

    for run, seed in enumerate(seeds):
        if (run, seed) in finished:
            runs[run] = finished[(run, seed)]
            continue
        result = train(run, seed)
        if result is not None and (best is None or _rank(result) > _rank(best)): keep(result)
    top = max(runs.values(), key=_rank, default=None)
    if top is not None and (best is None or (top.run, top.seed) != (best.run, best.seed)):
        notify(f'{task.name}: the best dev run (run {top.run + 1}, seed {top.seed}) has no saved weights (stopped '
               'while saving them, or --save_models false): trained again for the test predictions')
        result = train(top.run, top.seed)
        if result is not None: keep(result)
    return TaskResult(task.name, [runs[run] for run in sorted(runs)], best, failed)


def _rank(run):
    """Which run is best: the higher dev score, then the earlier run, as an uninterrupted set finds it (a nan score
    ranks last), so that runs finished in another order (--resume) pick the same one."""
    score = run.score if run.score == run.score else -math.inf
    return score, -run.run


def _run_failed(task, run, seed, n_runs, error, log_dir):
    """One line naming the run and the error; the full traceback goes to the run's log folder."""
    where = ''
    if log_dir is not None:
        try:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / 'error.txt').write_text(''.join(traceback.format_exception(error)))
            where = f' (traceback in {Path(log_dir) / "error.txt"})'
        except OSError:
            pass
    return (f'{task.name} run {run + 1}/{n_runs} (seed {seed}) failed: {type(error).__name__}: '
            f'{first_line(error)}{where}')


def saved_best(path, finished):
    """For --resume: the run whose weights `save_finetuned` left at `path`, with them, if it is one of the
    `finished` runs ({(run, seed): RunResult}, same dev score); else None (absent, unreadable or another run's)."""
    if not Path(path).is_file(): return None
    try:
        saved = read_finetuned(path)
        run = finished.get((saved.get('run'), saved.get('seed')))
        if run is None or not math.isclose(run.score, float(saved['dev']['score']), rel_tol=1e-4, abs_tol=1e-4):
            return None
    except (UserError, KeyError, TypeError, ValueError):
        return None
    return dataclasses.replace(run, state_dict=saved['state_dict'])


def summarize(runs):
    """Per task, over the runs' dev scores (each run's last evaluation, or its best: `RunResult.chosen`): median
    (the paper's statistic), mean, std, min, max of the main metric, and the median of the other metrics. Then a
    'GLUE avg' row: the mean of the medians over the paper's 8 tasks (no WNLI) that are present. `runs`:
    RunResults, or the rows of runs.csv as a DataFrame (each run's last row).

    Returns (DataFrame indexed by task, GlueAverage).
    """
    import pandas as pd
    final = final_rows(runs)
    rows = {}
    for name in [t for t in TASKS if t in set(final.task)]:
        scores = final[final.task == name]
        task = TASKS[name]
        s = scores['score'].astype(float)
        row = dict(metric=task.main_metric, runs=len(s), median=s.median(), mean=s.mean(),
                   std=s.std(ddof=1) if len(s) > 1 else math.nan, min=s.min(), max=s.max(),
                   best_seed=int(scores.loc[s.idxmax(), 'seed']))
        others = [m for m in (*task.metrics, 'mismatched_acc') if m != task.main_metric and m in scores
                  and scores[m].notna().any()]
        row['other (median)'] = ', '.join(f'{m} {scores[m].median():.1f}' for m in others)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient='index')
    table.index.name = 'task'
    average = glue_average({name: row['median'] for name, row in rows.items()})
    if rows:
        table.loc['GLUE avg'] = dict(metric='median', runs=math.nan, median=average.score, mean=math.nan,
                                     std=math.nan, min=math.nan, max=math.nan, best_seed=math.nan,
                                     **{'other (median)': _average_note(average)})
    return table, average


def final_rows(runs):
    """Each run's result as a DataFrame row: from RunResults, the evaluation that is the run's (`RunResult.chosen`);
    from the rows of runs.csv (a DataFrame), each run's last."""
    import pandas as pd
    if not isinstance(runs, pd.DataFrame):
        return pd.DataFrame([dict(task=r.task, run=r.run, seed=r.seed, **r.chosen) for r in runs])
    return runs.sort_values('epoch', kind='stable').groupby(['task', 'run', 'seed']).tail(1)


def _average_note(average):
    if not average.missing: return f'{len(GLUE_AVERAGE_TASKS)} tasks, no WNLI (the paper\'s GLUE dev average)'
    return f"not comparable with the paper: no {', '.join(average.missing)}"


def format_table(table):
    """The summary as aligned text (numbers with 2 decimals)."""
    return _formatted(table).to_string()


def _formatted(table):
    out = table.copy()
    for col in ('median', 'mean', 'std', 'min', 'max'):
        out[col] = out[col].map(lambda v: '' if is_missing(v) else f'{v:.2f}')
    for col in ('runs', 'best_seed'):
        out[col] = out[col].map(lambda v: '' if is_missing(v) else f'{int(v)}')
    return out


def is_missing(v):
    return v is None or (isinstance(v, float) and math.isnan(v))


def save_summary(table, out_dir, title='', name='summary', formatted=None):
    """<name>.csv (full precision) and <name>.md (2 decimals) in `out_dir`; returns their paths. `formatted`: the
    table as shown (default: `summarize`'s columns with 2 decimals)."""
    out_dir = Path(out_dir)
    atomic_write(out_dir / f'{name}.csv', lambda tmp: table.to_csv(tmp, float_format='%.4f'))
    shown = (formatted if formatted is not None else _formatted(table)).reset_index()
    lines = [f'# {title}', ''] if title else []
    lines += ['| ' + ' | '.join(shown.columns) + ' |', '|' + '---|' * len(shown.columns)]
    lines += ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in shown.itertuples(index=False)]
    atomic_write_text(out_dir / f'{name}.md', '\n'.join(lines) + '\n')
    return out_dir / f'{name}.csv', out_dir / f'{name}.md'
