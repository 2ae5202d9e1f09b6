"""GLUE: the task table and the loaders, which read any source into the same rows.

The facts are in RECIPE.md, "GLUE finetuning" and "GLUE test submission". The path of the data:
    classic tsv folder | hub nyu-mll/glue (or its parquet files) -> uniform rows (here)
    -> WordPiece ids, length-grouped batches (glue_data) -> ElectraClassifier (classifier)
    -> predictions -> metrics | submission files (glue_scores)

Every loader returns `datasets.Dataset`s with the same columns, whatever the source:
    sentence1  str
    sentence2  str (pair tasks only; the column is absent for CoLA and SST-2)
    label      int, class index in the classic tsv label order (`GlueTask.labels`); float for STS-B;
               -1 (nan for STS-B) on test splits
    idx        int, the file's own index on test splits (the submission needs it), the row number otherwise
"""
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from .errors import UserError, did_you_mean, first_line
from .files import PROJECT_DIR

BUNDLED_GLUE_DIR = PROJECT_DIR / 'datasets' / 'glue_sample'
HUB_DATASET = 'nyu-mll/glue'


class TaskUnavailable(UserError):
    """A task's files are missing or not in the expected format; the caller skips the task with a notice."""


# ---------------------------------------------------------------------------------------------------------------
# The task table
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GlueTask:
    name: str                      # official GLUE name
    hub_config: str                # config of nyu-mll/glue
    labels: tuple                  # class names in the classic tsv order: the class index; () for regression
    metrics: tuple                 # reported metrics, keys of `compute_metrics`
    main_metric: str               # the one that goes into the GLUE average
    tsv_files: tuple               # ((split, path relative to the GLUE folder), ...), in split order
    submission_files: tuple = ()   # ((test split, file name in the submission zip), ...)
    epochs: int = 3
    is_regression: bool = False
    doubled: bool = False          # training data doubled with the two sentences swapped (MRPC, STS-B)
    predicted_by: str | None = None  # AX has no training data: the MNLI model predicts it
    # Where each field lives in the sources. Columns are found by header name, so extra columns do no harm.
    tsv_text: tuple = ('sentence1', 'sentence2')  # 1 name for single-sentence tasks
    tsv_label: str = 'label'
    tsv_index: str = 'index'       # test files' index column
    tsv_headerless: tuple = ()     # column names of train/dev files that have no header (CoLA)
    hub_text: tuple = ('sentence1', 'sentence2')
    hub_labels: tuple = ('0', '1')  # the hub's class order, in tsv label names: hub label i is `hub_labels[i]`

    @property
    def splits(self):
        return tuple(split for split, _ in self.tsv_files)

    @property
    def is_pair(self):
        return len(self.tsv_text) == 2

    @property
    def n_outputs(self):
        return 1 if self.is_regression else len(self.labels)

    @property
    def dev_splits(self):
        return tuple(s for s in self.splits if s.startswith('dev'))

    @property
    def test_splits(self):
        return tuple(s for s in self.splits if s.startswith('test'))


def _files(folder, splits):
    return tuple((split, f'{folder}/{split}.tsv') for split in splits)


BINARY = ('0', '1')
NLI = ('contradiction', 'entailment', 'neutral')  # the classic GLUE/BERT processors' order (sorted)
QNLI_RTE = ('entailment', 'not_entailment')
MNLI_SPLITS = ('train', 'dev_matched', 'dev_mismatched', 'test_matched', 'test_mismatched')
ALL_SPLITS = ('train', 'dev', 'test')

TASKS = {t.name: t for t in [
    GlueTask('CoLA', 'cola', BINARY, ('mcc',), 'mcc', _files('CoLA', ALL_SPLITS), (('test', 'CoLA.tsv'),),
             tsv_text=('sentence',), tsv_headerless=('source', 'label', 'orig_label', 'sentence'),
             hub_text=('sentence',)),
    GlueTask('SST-2', 'sst2', BINARY, ('acc',), 'acc', _files('SST-2', ALL_SPLITS), (('test', 'SST-2.tsv'),),
             tsv_text=('sentence',), hub_text=('sentence',)),
    GlueTask('MRPC', 'mrpc', BINARY, ('acc', 'f1'), 'acc', _files('MRPC', ALL_SPLITS), (('test', 'MRPC.tsv'),),
             doubled=True, tsv_text=('#1 String', '#2 String'), tsv_label='Quality'),
    GlueTask('STS-B', 'stsb', (), ('spearman', 'pearson'), 'spearman', _files('STS-B', ALL_SPLITS),
             (('test', 'STS-B.tsv'),), epochs=10, is_regression=True, doubled=True, tsv_label='score',
             hub_labels=()),
    GlueTask('QQP', 'qqp', BINARY, ('acc', 'f1'), 'acc', _files('QQP', ALL_SPLITS), (('test', 'QQP.tsv'),),
             tsv_text=('question1', 'question2'), tsv_label='is_duplicate', tsv_index='id',
             hub_text=('question1', 'question2')),
    GlueTask('MNLI', 'mnli', NLI, ('acc',), 'acc', _files('MNLI', MNLI_SPLITS),
             (('test_matched', 'MNLI-m.tsv'), ('test_mismatched', 'MNLI-mm.tsv')),
             tsv_label='gold_label', hub_text=('premise', 'hypothesis'),
             hub_labels=('entailment', 'neutral', 'contradiction')),
    GlueTask('QNLI', 'qnli', QNLI_RTE, ('acc',), 'acc', _files('QNLI', ALL_SPLITS), (('test', 'QNLI.tsv'),),
             tsv_text=('question', 'sentence'), hub_text=('question', 'sentence'), hub_labels=QNLI_RTE),
    GlueTask('RTE', 'rte', QNLI_RTE, ('acc',), 'acc', _files('RTE', ALL_SPLITS), (('test', 'RTE.tsv'),),
             epochs=10, hub_labels=QNLI_RTE),
    GlueTask('WNLI', 'wnli', BINARY, ('acc',), 'acc', _files('WNLI', ALL_SPLITS), (('test', 'WNLI.tsv'),)),
    # The diagnostic set: test only, scored by the server with Matthews corr. over the MNLI classes.
    GlueTask('AX', 'ax', NLI, ('mcc',), 'mcc', (('test', 'diagnostic/diagnostic.tsv'),), (('test', 'AX.tsv'),),
             predicted_by='MNLI', hub_text=('premise', 'hypothesis'),
             hub_labels=('entailment', 'neutral', 'contradiction')),
]}

# The paper's "GLUE dev average": the 8 tasks without WNLI (and AX, which has no dev set).
GLUE_AVERAGE_TASKS = ('CoLA', 'SST-2', 'MRPC', 'STS-B', 'QQP', 'MNLI', 'QNLI', 'RTE')

# Submission file stem -> (task, test split), in the order of RECIPE.md; and the official test sizes.
SUBMISSION_FILES = {Path(file).stem: (task.name, split)
                    for task in TASKS.values() for split, file in task.submission_files}
SUBMISSION_FILES = {stem: SUBMISSION_FILES[stem] for stem in
                    ('CoLA', 'SST-2', 'MRPC', 'STS-B', 'QQP', 'MNLI-m', 'MNLI-mm', 'QNLI', 'RTE', 'WNLI', 'AX')}
TEST_SIZES = dict(zip(SUBMISSION_FILES, (1063, 1821, 1725, 1379, 390965, 9796, 9847, 5463, 3000, 146, 1104)))

_ALIASES = {'mnlim': 'MNLI', 'mnlimm': 'MNLI', 'mnlimatched': 'MNLI', 'mnlimismatched': 'MNLI',
            'sst': 'SST-2', 'sts': 'STS-B', 'diagnostic': 'AX'}


def squash_name(name):
    """A task name without case and punctuation: 'STS-B', 'sts_b' and 'stsb' are one key."""
    return ''.join(c for c in name.lower() if c.isalnum())


def task_by_name(name):
    """The `GlueTask` for an official name, a hub config or an alias, case-insensitive ('sst2', 'STS-B', 'mnli-m')."""
    if isinstance(name, GlueTask): return name
    known = {squash_name(t.name): t.name for t in TASKS.values()} | {t.hub_config: t.name for t in TASKS.values()}
    known |= _ALIASES
    key = squash_name(str(name))
    if key in known: return TASKS[known[key]]
    close = did_you_mean(name, list(TASKS) + [t.hub_config for t in TASKS.values()])
    hint = f"did you mean '{close}'? " if close else ''
    raise UserError(f"unknown GLUE task '{name}'; {hint}known tasks: {', '.join(TASKS)}")


# ---------------------------------------------------------------------------------------------------------------
# Loading: classic tsv folder
# ---------------------------------------------------------------------------------------------------------------
def _features(task, split):
    features = {'sentence1': datasets.Value('string')}
    if task.is_pair: features['sentence2'] = datasets.Value('string')
    features['label'] = datasets.Value('float32' if task.is_regression else 'int64')
    features['idx'] = datasets.Value('int64')
    return datasets.Features(features)


def _test_label(task):
    return math.nan if task.is_regression else -1


def _read_tsv_split(path, rel, task, split):
    """One classic tsv file -> dict of uniform columns. Raises `TaskUnavailable` naming the file and the problem."""
    is_test = split.startswith('test')
    # utf-8-sig drops MRPC's BOM; no quoting, since some sentences contain '"' (SOURCES.md).
    with open(path, encoding='utf-8-sig', newline='') as f:
        rows = [(n, row) for n, row in enumerate(csv.reader(f, delimiter='\t', quotechar=None), start=1) if row]
    if task.tsv_headerless and not is_test:
        header = list(task.tsv_headerless)
    else:
        if not rows: raise TaskUnavailable(f'{rel}: empty file, expected a header line')
        header = rows.pop(0)[1]
    wanted = ([task.tsv_index] if is_test else []) + list(task.tsv_text) + ([] if is_test else [task.tsv_label])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise TaskUnavailable(f"{rel}: no column {', '.join(repr(m) for m in missing)} "
                              f"(columns: {' '.join(header)})")
    # The last column with that name: MNLI's gold label is the last column (BERT's processor reads line[-1]).
    col = {name: len(header) - 1 - header[::-1].index(name) for name in wanted}
    n_cols = max(col.values()) + 1

    out = {key: [] for key in _features(task, split)}
    for row_number, (line, row) in enumerate(rows):
        if len(row) < n_cols:
            raise TaskUnavailable(f'{rel} line {line}: {len(row)} columns, expected {len(header)} ({" ".join(header)})')
        out['sentence1'].append(row[col[task.tsv_text[0]]])
        if task.is_pair: out['sentence2'].append(row[col[task.tsv_text[1]]])
        if is_test:
            out['label'].append(_test_label(task))
            out['idx'].append(_parse(int, row[col[task.tsv_index]], rel, line, 'index'))
        else:
            value = row[col[task.tsv_label]]
            if task.is_regression:
                out['label'].append(_parse(float, value, rel, line, 'score'))
            elif value in task.labels:
                out['label'].append(task.labels.index(value))
            else:
                raise TaskUnavailable(f"{rel} line {line}: label '{value}' is not one of {', '.join(task.labels)}")
            out['idx'].append(row_number)
    return out


def _parse(kind, value, rel, line, what):
    try:
        return kind(value)
    except ValueError:
        raise TaskUnavailable(f"{rel} line {line}: {what} '{value}' is not a number") from None


def load_glue_tsv(task, glue_dir=BUNDLED_GLUE_DIR, splits=None, required=()):
    """A task from a folder in the classic `download_glue_data.py` layout -> `DatasetDict` of its splits.

    `splits`: which splits to read (default: every split of the task whose file exists, e.g. no STS-B dev in the
    bundled sample; the caller decides what to do, see `split_off_dev`). `required`: splits whose absence raises.
    Raises `TaskUnavailable` when no file of the task exists, a required one is missing, or a file's columns are
    wrong; `UserError` when `glue_dir` itself does not exist.
    """
    task = task_by_name(task)
    glue_dir = Path(os.path.expanduser(str(glue_dir)))
    if not glue_dir.is_dir(): raise UserError(f'GLUE folder {glue_dir} does not exist')
    files = dict(task.tsv_files)
    unknown = [s for s in tuple(splits or ()) + tuple(required) if s not in files]
    if unknown: raise UserError(f"{task.name} has no split {', '.join(unknown)}; its splits: {', '.join(files)}")
    for split in required:
        if not (glue_dir / files[split]).is_file():
            raise TaskUnavailable(f'{glue_dir / files[split]}: file not found ({task.name} needs its {split} split)')
    wanted = [s for s in (splits or files) if (glue_dir / files[s]).is_file()]
    if not wanted:
        expected = ', '.join(files[s] for s in splits or files)
        raise TaskUnavailable(f'no {task.name} files in {glue_dir}: expected {expected}')
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(_read_tsv_split(glue_dir / files[split], files[split], task, split),
                                          features=_features(task, split))
        for split in wanted})


# ---------------------------------------------------------------------------------------------------------------
# Loading: the Hugging Face hub (nyu-mll/glue) or a local copy of its parquet files
# ---------------------------------------------------------------------------------------------------------------
def hub_split(split):
    """Our split name -> the hub's ('dev_matched' -> 'validation_matched')."""
    return split.replace('dev', 'validation')


def load_glue_hub(task, parquet_dir=None, splits=None, required=(), cache_dir=None):
    """A task from the hub's `nyu-mll/glue` -> `DatasetDict` with the uniform columns and the tsv label order.

    `parquet_dir`: a local folder laid out like the hub's files (`<config>/<split>-00000-of-00001.parquet`);
    None downloads from the hub (needs network). Labels are mapped from the hub's order to the tsv order
    (hub MNLI/AX: 0=entailment 1=neutral 2=contradiction), so both sources give identical rows.
    """
    task = task_by_name(task)
    wanted = tuple(splits or task.splits)
    if parquet_dir is None:
        try:
            raw = datasets.load_dataset(HUB_DATASET, task.hub_config, cache_dir=cache_dir)
        except Exception as e:  # offline, hub down, ...: one line, with the local alternative
            raise UserError(f'cannot load {HUB_DATASET} ({task.hub_config}) from the Hugging Face hub '
                            f'({first_line(e)}); with no network give --glue_dir bundled or a folder in the '
                            'classic download_glue_data.py layout') from e
        raw = {split: raw[hub_split(split)] for split in wanted if hub_split(split) in raw}
        where = {split: f'{HUB_DATASET}/{task.hub_config}/{hub_split(split)}' for split in raw}
    else:
        folder = Path(os.path.expanduser(str(parquet_dir))) / task.hub_config
        shards = {split: sorted(folder.glob(f'{hub_split(split)}-*.parquet')) for split in wanted}
        shards = {split: [str(p) for p in paths] for split, paths in shards.items() if paths}
        if not shards:
            raise TaskUnavailable(f"no {task.name} parquet files in {folder}: expected "
                                  f"{', '.join(hub_split(s) + '-00000-of-00001.parquet' for s in wanted)}")
        raw = datasets.load_dataset('parquet', data_files=shards, cache_dir=cache_dir)
        where = {split: paths[0] for split, paths in shards.items()}
    for split in required:
        if split not in raw:
            raise TaskUnavailable(f'{task.name}: no {hub_split(split)} split in {parquet_dir or HUB_DATASET}')
    return datasets.DatasetDict({split: _from_hub(raw[split], task, split, where[split]) for split in raw})


def _from_hub(ds, task, split, where):
    is_test = split.startswith('test')
    missing = [c for c in (*task.hub_text, 'label', 'idx') if c not in ds.column_names]
    if missing:
        raise TaskUnavailable(f"{where}: no column {', '.join(missing)} (columns: {' '.join(ds.column_names)})")
    hub_names = getattr(ds.features['label'], 'names', None)
    if hub_names and task.hub_labels != BINARY and list(hub_names) != list(task.hub_labels):
        raise TaskUnavailable(f'{where}: label names {hub_names}, expected {list(task.hub_labels)}')
    hub_to_tsv = [task.labels.index(name) for name in task.hub_labels]  # hub class i -> tsv class index

    def convert(batch, rows):
        out = {'sentence1': batch[task.hub_text[0]]}
        if task.is_pair: out['sentence2'] = batch[task.hub_text[1]]
        if is_test: out['label'] = [_test_label(task)] * len(rows)  # the hub's -1
        elif task.is_regression: out['label'] = batch['label']
        else: out['label'] = [hub_to_tsv[y] for y in batch['label']]
        # The hub's own idx is not the row number everywhere (MRPC train); on test splits it is the file's index.
        out['idx'] = batch['idx'] if is_test else rows
        return out

    return ds.map(convert, batched=True, with_indices=True, remove_columns=ds.column_names,
                  features=_features(task, split), desc=f'{task.name} {split}')


def split_off_dev(train_ds, fraction=0.1, seed=0):
    """Carve a deterministic dev set out of train (for STS-B and RTE, whose dev sets the shared data lacks).

    Returns (train, dev); both keep the original row order, so the same seed always gives the same split.
    """
    n_dev = max(1, round(len(train_ds) * fraction))
    dev_rows = np.sort(np.random.default_rng(seed).permutation(len(train_ds))[:n_dev])
    is_dev = np.zeros(len(train_ds), dtype=bool)
    is_dev[dev_rows] = True
    return train_ds.select(np.flatnonzero(~is_dev)), train_ds.select(dev_rows)


def double_with_swapped(dataset):
    """MRPC and STS-B training data doubled with the two sentences swapped (RECIPE.md).

    Order: all original rows, then the same rows swapped (row i + n is row i swapped; labels and idx kept).
    The training sampler shuffles, so the order only matters for reading the data.
    """
    swapped = dataset.map(lambda b: {'sentence1': b['sentence2'], 'sentence2': b['sentence1']}, batched=True,
                          desc='swap sentences')
    return datasets.concatenate_datasets([dataset, swapped])
