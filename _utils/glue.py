"""GLUE: the task table, loaders, encoding, batching, the paper's classification head, metrics, test submission.

The facts implemented here are in RECIPE.md, "GLUE finetuning" and "GLUE test submission". The path of the data:
    classic tsv folder | hub nyu-mll/glue (or its parquet files) -> uniform rows -> WordPiece ids
    -> length-grouped, padded batches -> ElectraClassifier -> predictions -> metrics | submission files

Every loader returns `datasets.Dataset`s with the same columns, whatever the source:
    sentence1  str
    sentence2  str (pair tasks only; the column is absent for CoLA and SST-2)
    label      int, class index in the classic tsv label order (`GlueTask.labels`); float for STS-B;
               -1 (nan for STS-B) on test splits
    idx        int, the file's own index on test splits (the submission needs it), the row number otherwise
"""
import csv
import functools
import hashlib
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .dropout import use_fast_dropout
from .errors import UserError, did_you_mean, first_line
from .files import PROJECT_DIR, atomic_write, atomic_write_text
from .text import BUILDER_VERSION, text_to_ids, tokenizer_fingerprint
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


def _squash(name):
    return ''.join(c for c in name.lower() if c.isalnum())


def task_by_name(name):
    """The `GlueTask` for an official name, a hub config or an alias, case-insensitive ('sst2', 'STS-B', 'mnli-m')."""
    if isinstance(name, GlueTask): return name
    known = {_squash(t.name): t.name for t in TASKS.values()} | {t.hub_config: t.name for t in TASKS.values()}
    known |= _ALIASES
    key = _squash(str(name))
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


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------
def truncated_lengths(len_a, len_b, budget):
    """Lengths after popping one token at a time from the longer segment until len_a + len_b <= budget.

    On a tie the official code pops from b, so when both are cut a keeps the odd token (63 + 62 at length 128).
    (The tokenizers library's 'longest_first' gives the odd token to b: that is why we truncate ourselves.)
    """
    if len_a + len_b <= budget: return len_a, len_b
    half_b = budget // 2
    half_a = budget - half_b
    if len_b <= half_b: return budget - len_b, len_b
    if len_a <= half_a: return len_a, budget - len_a
    return half_a, half_b


def pack_pair(ids_a, ids_b, max_length, cls_id, sep_id):
    """`[CLS] a [SEP] b [SEP]` (or `[CLS] a [SEP]`) truncated longest-first -> (input_ids, token_type_ids)."""
    if ids_b is None:
        ids_a = ids_a[:max_length - 2]
        return [cls_id, *ids_a, sep_id], [0] * (len(ids_a) + 2)
    n_a, n_b = truncated_lengths(len(ids_a), len(ids_b), max_length - 3)
    input_ids = [cls_id, *ids_a[:n_a], sep_id, *ids_b[:n_b], sep_id]
    return input_ids, [0] * (n_a + 2) + [1] * (n_b + 1)


def encode(dataset, tokenizer, max_length=128, num_proc=None):
    """Uniform rows -> `input_ids`, `token_type_ids` (unpadded lists), `label` and `idx`.

    WordPiece comes from the tokenizer's own batched call; the pair layout and truncation from `pack_pair`.
    """
    is_pair = 'sentence2' in dataset.column_names
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def tokenize(batch):
        a = text_to_ids(tokenizer, batch['sentence1'])
        b = text_to_ids(tokenizer, batch['sentence2']) if is_pair else [None] * len(a)
        packed = [pack_pair(x, y, max_length, cls_id, sep_id) for x, y in zip(a, b)]
        return {'input_ids': [p[0] for p in packed], 'token_type_ids': [p[1] for p in packed]}

    drop = [c for c in dataset.column_names if c not in ('label', 'idx')]
    # Our own fingerprint: otherwise `datasets` hashes the whole tokenizer on every call (~0.3 s)
    fingerprint = hashlib.sha256(f'{dataset._fingerprint}-{tokenizer_fingerprint(tokenizer)}-{max_length}'
                                 f'-{BUILDER_VERSION}'.encode()).hexdigest()[:16]
    return dataset.map(tokenize, batched=True, remove_columns=drop, num_proc=num_proc, desc='tokenize',
                       new_fingerprint=fingerprint)


# ---------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------
class LengthGroupedBatchSampler(torch.utils.data.Sampler):
    """Batches of examples of similar length, so little compute goes to padding, in a random order.

    Each epoch: shuffle all rows, cut them into pools of `pool_batches` batches, sort each pool by length, cut
    it into batches, shuffle the order of all batches. Randomness comes from (seed, epoch) only, so runs repeat;
    the epoch advances by itself at each pass (or `set_epoch`). shuffle=False: batches in dataset order (eval).
    """

    def __init__(self, lengths, batch_size, shuffle=True, seed=0, pool_batches=50, drop_last=False):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pool_batches, self.drop_last = pool_batches, drop_last
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self):
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.arange(n)
            batches = [order[i:i + bs] for i in range(0, n, bs)]
        else:
            rng = np.random.default_rng((self.seed, self.epoch))
            order = rng.permutation(n)
            pool = bs * self.pool_batches
            batches = []
            for start in range(0, n, pool):
                rows = order[start:start + pool]
                rows = rows[np.argsort(self.lengths[rows], kind='stable')]
                batches += [rows[i:i + bs] for i in range(0, len(rows), bs)]
            rng.shuffle(batches)
        if self.drop_last: batches = [b for b in batches if len(b) == bs]
        return [b.tolist() for b in batches]

    def __iter__(self):
        batches = self.batches()
        self.epoch += 1
        return iter(batches)


def collate(examples, pad_id=0):
    """Pad to the batch's longest example -> (input_ids, attention_mask, token_type_ids, labels).

    input_ids, attention_mask, token_type_ids: (B, L) int64, padded with pad_id / 0 / 0; labels: (B,) int64 or
    float32 (STS-B).
    """
    longest = max(len(e['input_ids']) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)  # (B, L)
    token_type_ids = torch.zeros_like(input_ids)
    attention_mask = torch.zeros_like(input_ids)
    for i, e in enumerate(examples):
        n = len(e['input_ids'])
        input_ids[i, :n] = torch.tensor(e['input_ids'])
        token_type_ids[i, :n] = torch.tensor(e['token_type_ids'])
        attention_mask[i, :n] = 1
    is_float = isinstance(examples[0]['label'], float)
    labels = torch.tensor([e['label'] for e in examples], dtype=torch.float32 if is_float else torch.long)  # (B,)
    return input_ids, attention_mask, token_type_ids, labels


def glue_dataloader(encoded, batch_size=32, shuffle=True, seed=0, num_workers=0, pad_id=0):
    """A torch DataLoader over an `encode`d dataset: length-grouped shuffled batches, or dataset order."""
    lengths = [len(ids) for ids in encoded['input_ids']]
    sampler = LengthGroupedBatchSampler(lengths, batch_size, shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(encoded, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=functools.partial(collate, pad_id=pad_id))


# ---------------------------------------------------------------------------------------------------------------
# The paper's head, losses, predictions
# ---------------------------------------------------------------------------------------------------------------
class ElectraClassifier(nn.Module):
    """The discriminator body, then dropout on the [CLS] vector and one linear layer (RECIPE.md).

    No pooler and no extra dense+GELU layer (Hugging Face's ElectraClassificationHead has one; the paper has not).
    Submodules are named like Hugging Face's ElectraForSequenceClassification (`electra.*`, `classifier.*`).
    """

    def __init__(self, electra, n_outputs, dropout=0.1):
        super().__init__()
        self.electra = electra  # a transformers.ElectraModel: the pretrained discriminator without its head
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(electra.config.hidden_size, n_outputs)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        use_fast_dropout(self)  # the same dropout, 2-4x faster in CPU training

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.electra(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state  # (B, L, H)
        return self.classifier(self.dropout(hidden[:, 0]))  # (B, n_outputs)


def classification_loss(logits, labels, reduction='mean'):
    return F.cross_entropy(logits, labels, reduction=reduction)


def regression_loss(logits, labels, reduction='mean'):
    # STS-B: the model predicts score/5, so targets in [0, 5] become [0, 1]
    return F.mse_loss(logits.squeeze(-1).float(), labels.float() / 5, reduction=reduction)


LOSS_REDUCTIONS = ('sum', 'mean')


def loss_for(task, reduction):
    """Cross-entropy for classification; MSE on target/5 for STS-B; over a batch, the per-example losses' 'sum'
    (the official code's, whose gradient clipping at 1.0 then acts on a 32x larger norm) or 'mean'.
    A partial of a module-level function (picklable)."""
    if reduction not in LOSS_REDUCTIONS:
        raise UserError(f"unknown loss reduction '{reduction}'; use one of {', '.join(LOSS_REDUCTIONS)}")
    loss = regression_loss if task_by_name(task).is_regression else classification_loss
    return functools.partial(loss, reduction=reduction)


def predictions_from_logits(task, logits):
    """(B, n_outputs) logits -> (B,) numpy: class indices, or STS-B scores (the output ×5).

    STS-B scores are not clipped here: the dev metrics are computed on the raw outputs, as the official scorer
    does; only the submission file clips them to [0, 5] (`write_submission`).
    """
    logits = torch.as_tensor(logits).detach().float().cpu()
    if task_by_name(task).is_regression:
        return (logits.reshape(-1) * 5).numpy()
    return logits.argmax(-1).numpy()


# ---------------------------------------------------------------------------------------------------------------
# Metrics (in percent, like GLUE tables)
# ---------------------------------------------------------------------------------------------------------------
def compute_metrics(task, predictions, labels):
    """The task's metrics, ×100: {'mcc'} CoLA, {'spearman', 'pearson'} STS-B, {'acc', 'f1'} MRPC/QQP, {'acc'}."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef
    task = task_by_name(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    compute = {'mcc': lambda: matthews_corrcoef(labels, predictions),
               'acc': lambda: np.mean(predictions == labels),
               'f1': lambda: f1_score(labels, predictions),  # positive class 1 (paraphrase / duplicate)
               'pearson': lambda: pearsonr(predictions, labels)[0],
               'spearman': lambda: spearmanr(predictions, labels)[0]}
    return {name: 100 * float(compute[name]()) for name in task.metrics}


def main_score(task, metrics):
    return metrics[task_by_name(task).main_metric]


class GlueAverage(NamedTuple):
    score: float    # mean over the tasks present (nan if none)
    missing: list   # tasks of the 8 without a score: the average is then not comparable with the paper's


def glue_average(per_task_main_scores):
    """The paper's GLUE dev average: the 8 tasks without WNLI (and AX); MNLI = matched.

    `per_task_main_scores`: {task name: main score} (CoLA MCC, STS-B Spearman, accuracy elsewhere); other keys
    (WNLI, AX) are ignored.
    """
    # MNLI counts with its matched score: a key 'MNLI-mm' (mismatched) is left out rather than taken for MNLI.
    scores = {task_by_name(name).name: score for name, score in per_task_main_scores.items()
              if _squash(name) not in ('mnlimm', 'mnlimismatched')}
    present = [scores[t] for t in GLUE_AVERAGE_TASKS if t in scores]
    missing = [t for t in GLUE_AVERAGE_TASKS if t not in scores]
    return GlueAverage(float(np.mean(present)) if present else math.nan, missing)


# ---------------------------------------------------------------------------------------------------------------
# Test submission
# ---------------------------------------------------------------------------------------------------------------
class Submission(NamedTuple):
    files: list        # paths written, in submission order
    zip_path: Path
    missing: list      # submission stems not written (the GLUE server needs all 11)
    wrong_sizes: dict  # stem -> (rows written, official test size)


def _prediction_text(task, prediction):
    if task.is_regression:
        value = float(prediction)
        if math.isnan(value): raise UserError(f'{task.name}: a prediction is nan')
        return f'{min(max(value, 0.0), 5.0):.3f}'
    index = int(prediction)
    if not 0 <= index < len(task.labels):
        raise UserError(f'{task.name}: class index {index} out of range (classes: {", ".join(task.labels)})')
    return task.labels[index]


def write_submission(predictions, out_dir, zip_path=None, wnli_test_indices=None, glue_dir=BUNDLED_GLUE_DIR):
    """Write the GLUE test-server files and the zip (RECIPE.md, "GLUE test submission").

    `predictions`: {stem: (test indices, predictions)}, stems `CoLA SST-2 MRPC STS-B QQP MNLI-m MNLI-mm QNLI RTE
    WNLI AX`; predictions are class indices (tsv label order) or STS-B scores. Each file: header
    `index<TAB>prediction`, rows sorted by index. WNLI, when absent, predicts the majority class 0 for every test
    index (from `wnli_test_indices`, else read from `glue_dir`'s WNLI/test.tsv, complete in the bundled sample).
    Stems left out are reported in `missing` and in a printed line; the zip holds the files written, at its top
    level (default `out_dir/glue_submission.zip`).
    """
    unknown = [stem for stem in predictions if stem not in SUBMISSION_FILES]
    if unknown: raise UserError(f"unknown submission file {', '.join(unknown)}; expected {' '.join(SUBMISSION_FILES)}")
    predictions = dict(predictions)
    if 'WNLI' not in predictions:
        if wnli_test_indices is None:
            wnli_test_indices = load_glue_tsv('WNLI', glue_dir, splits=('test',), required=('test',))['test']['idx']
        predictions['WNLI'] = (list(wnli_test_indices), [0] * len(wnli_test_indices))  # majority class (RECIPE.md)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, missing, wrong_sizes = [], [], {}
    for stem, (task_name, _) in SUBMISSION_FILES.items():
        if stem not in predictions:
            missing.append(stem)
            continue
        task = TASKS[task_name]
        indices, values = (np.asarray(x).reshape(-1) for x in predictions[stem])
        if len(indices) != len(values):
            raise UserError(f'{stem}: {len(indices)} indices but {len(values)} predictions')
        if len(np.unique(indices)) != len(indices): raise UserError(f'{stem}: repeated test indices')
        order = np.argsort(indices, kind='stable')  # test order, whatever order the batches came in
        lines = ['index\tprediction'] + [f'{int(indices[i])}\t{_prediction_text(task, values[i])}' for i in order]
        path = out_dir / f'{stem}.tsv'
        atomic_write_text(path, '\n'.join(lines) + '\n')  # a crash never leaves a half-written file
        files.append(path)
        if len(indices) != TEST_SIZES[stem]: wrong_sizes[stem] = (len(indices), TEST_SIZES[stem])

    zip_path = Path(zip_path) if zip_path else out_dir / 'glue_submission.zip'
    zip_path.parent.mkdir(parents=True, exist_ok=True)

    def write_zip(tmp):
        with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as z:
            for path in files: z.write(path, arcname=path.name)  # top level, as the server wants
    atomic_write(zip_path, write_zip)

    if missing:
        print(f"GLUE submission incomplete: no predictions for {', '.join(s + '.tsv' for s in missing)}; "
              f'the GLUE server needs all {len(SUBMISSION_FILES)} files')
    if wrong_sizes:
        print('GLUE submission: test sizes differ from the official ones (not a full test set?): ' +
              ', '.join(f'{s}.tsv {n} rows, expected {expected}' for s, (n, expected) in wrong_sizes.items()))
    return Submission(files, zip_path, missing, wrong_sizes)
