"""GLUE data for a run: which source (bundled, a folder, the hub), the tasks asked for, their rows turned into
model inputs (WordPiece, `[CLS] a [SEP] b [SEP]`, the official truncation) and batches of similar lengths."""
import functools
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .files import say
from .glue import (BUNDLED_GLUE_DIR, TASKS, TaskUnavailable, double_with_swapped, load_glue_hub, load_glue_tsv,
                   split_off_dev, task_by_name)
from .text import BUILDER_VERSION, text_to_ids, tokenizer_fingerprint


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


@dataclass
class GlueSource:
    kind: str          # 'tsv' (classic folder), 'parquet' (a local copy of the hub's files) or 'hub'
    path: Path | None

    def __str__(self):
        return {'tsv': f'classic GLUE folder {self.path}', 'parquet': f'hub parquet files in {self.path}',
                'hub': 'Hugging Face hub nyu-mll/glue'}[self.kind]

    def load(self, task):
        if self.kind == 'tsv': return load_glue_tsv(task, self.path)
        return load_glue_hub(task, parquet_dir=self.path if self.kind == 'parquet' else None)


def glue_source(glue_dir='bundled'):
    """'bundled' (datasets/glue_sample), 'hub' (nyu-mll/glue), a classic-layout folder or a folder of the hub's
    parquet files (`<config>/<split>-*.parquet`)."""
    if glue_dir in ('', 'bundled', None): return GlueSource('tsv', BUNDLED_GLUE_DIR)
    if glue_dir == 'hub': return GlueSource('hub', None)
    path = Path(os.path.expanduser(str(glue_dir)))
    if not path.is_dir():
        raise UserError(f"--glue_dir '{glue_dir}' is not a folder; give 'bundled', 'hub', or a folder in the classic "
                        "download_glue_data.py layout (CoLA/train.tsv, ...)")
    if any(path.glob('*/*.parquet')): return GlueSource('parquet', path)
    known = {p for task in TASKS.values() for _, rel in task.tsv_files for p in [Path(rel).parts[0]]}
    if not any((path / name).is_dir() for name in known):
        raise UserError(f"--glue_dir '{glue_dir}' holds no GLUE task folder ({', '.join(sorted(known))}); give the "
                        "folder that download_glue_data.py wrote, 'bundled' or 'hub'")
    return GlueSource('tsv', path)


def parse_tasks(tasks):
    """'all' or a comma list ('cola,sst2,RTE') -> official names in GLUE order; AX is added by MNLI, never trained."""
    if tasks in ('', 'all', None): return [name for name, task in TASKS.items() if task.predicted_by is None]
    names = [task_by_name(t.strip()).name for t in tasks.split(',') if t.strip()]
    predicted = [n for n in names if TASKS[n].predicted_by]
    if predicted:
        raise UserError(f"{predicted[0]} has no training data: the {TASKS[predicted[0]].predicted_by} model "
                        f"predicts it; add {TASKS[predicted[0]].predicted_by} to --tasks instead")
    return [name for name in TASKS if name in names]


@dataclass
class TaskData:
    task: object                    # GlueTask
    train: object                   # encoded training set (MRPC, STS-B: doubled with swapped sentences)
    dev: dict                       # {split: encoded}; the first is the one the main score comes from
    test: dict                      # {split: encoded}, possibly empty
    notes: list = field(default_factory=list)

    def sizes(self):
        return {'train': len(self.train), **{s: len(d) for s, d in self.dev.items()},
                **{s: len(d) for s, d in self.test.items()}}


def load_task_data(task, source, tokenizer, max_length=128, dev_fraction=0.1, notify=say):
    """A task's train / dev / test, encoded; None (after a one-line notice) when the task cannot be trained.

    A missing dev split is carved out of train with `split_off_dev` (the same rows for every run). MRPC and
    STS-B training data are doubled with the two sentences swapped *after* that split, so no dev row leaks.
    """
    task = task_by_name(task)
    try:
        raw = source.load(task)
    except TaskUnavailable as e:
        notify(f'{task.name}: skipped ({e})')
        return None
    if 'train' not in raw:
        notify(f'{task.name}: skipped (no training split in {source})')
        return None
    train, notes = raw['train'], []
    dev = {s: raw[s] for s in task.dev_splits if s in raw}
    if not dev:
        train, held_out = split_off_dev(train, dev_fraction, seed=0)
        dev = {task.dev_splits[0]: held_out}
        notes.append(f'no dev split in {source}: dev = a fixed {dev_fraction:.0%} of train '
                     f'({len(held_out)} rows), trained on the other {len(train)}')
        notify(f'{task.name}: {notes[-1]}')
    if task.doubled: train = double_with_swapped(train)
    enc = lambda ds: encode(ds, tokenizer, max_length)
    return TaskData(task, enc(train), {s: enc(d) for s, d in dev.items()},
                    {s: enc(raw[s]) for s in task.test_splits if s in raw}, notes)


def load_tasks(names, source, tokenizer, max_length=128, dev_fraction=0.1, notify=say):
    """`load_task_data` for each task -> ({name: TaskData}, {name: why it was skipped})."""
    data, skipped = {}, {}
    for name in names:
        reasons = []
        loaded = load_task_data(name, source, tokenizer, max_length, dev_fraction,
                                notify=lambda msg: (reasons.append(msg.split(': ', 1)[-1]), notify(msg)))
        if loaded is None: skipped[name] = reasons[-1] if reasons else 'skipped'
        else: data[name] = loaded
    if not data:
        raise UserError(f"no task can be finetuned from {source}: " +
                        '; '.join(f'{n} {why}' for n, why in skipped.items()) +
                        "; give a --glue_dir holding these tasks' files (the download_glue_data.py layout or the "
                        "hub's parquet files), 'bundled', or other --tasks")
    return data, skipped


def load_test_only(task, source, tokenizer, max_length=128):
    """Test splits of a task without training data (AX), encoded; {} when absent."""
    task = task_by_name(task)
    try: raw = source.load(task)
    except TaskUnavailable: return {}
    return {s: encode(raw[s], tokenizer, max_length) for s in task.test_splits if s in raw}
