"""Text: tokenizers, corpus sources, the official example builder, and the on-disk cache of packed examples.

The path of the data (RECIPE.md, "Pretraining data"):
    corpus (hub name | local files | bundled sample) -> documents -> lines -> WordPiece ids (the bundled BERT
    vocabulary, any Hugging Face tokenizer, or one trained on the corpus: `train_tokenizer`)
    -> ExampleBuilder packs lines into `[CLS] A [SEP] B [SEP]` examples -> padded arrays cached in datasets/cache/
Masking is *not* done here: it is dynamic, re-drawn at every step (see electra.py).
"""
import hashlib
import inspect
import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, first_line
from .files import PROJECT_DIR, say, slug

DATASETS_DIR = PROJECT_DIR / 'datasets'
BUNDLED_VOCAB = DATASETS_DIR / 'vocab' / 'bert-uncased-vocab.txt'
BUNDLED_CORPUS = DATASETS_DIR / 'wiki_sample'
# Bump when the example builder or the way text becomes ids changes, so that old caches are never reused
# (2: literal special-token strings in the text are split like other text)
BUILDER_VERSION = 2


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------
def load_tokenizer(name_or_path='bundled'):
    """The BERT uncased WordPiece tokenizer (bundled vocab, 30,522 tokens) or any Hugging Face tokenizer.

    `name_or_path`: 'bundled', a vocab.txt file, a folder saved by `save_pretrained`, or a hub id.
    """
    from transformers import AutoTokenizer, ElectraTokenizerFast
    if name_or_path in (None, '', 'bundled'): name_or_path = BUNDLED_VOCAB
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_file():
        # A bare WordPiece vocab. transformers 5 takes `vocab=` and silently ignores `vocab_file=`
        # (giving a 5-token vocab), transformers 4 takes `vocab_file=`: support both.
        if 'vocab' in inspect.signature(ElectraTokenizerFast.__init__).parameters:
            vocab = {line.rstrip('\n'): i for i, line in enumerate(path.open(encoding='utf-8'))}
            tok = ElectraTokenizerFast(vocab=vocab, do_lower_case=True)
        else:
            tok = ElectraTokenizerFast(vocab_file=str(path), do_lower_case=True)
        tok.name_or_path = str(path)
    else:
        if looks_like_path(str(name_or_path)) and not path.exists():
            raise UserError(f"tokenizer path '{name_or_path}' does not exist; give a vocab.txt, a tokenizer folder, "
                            "a Hugging Face tokenizer id, or 'bundled'")
        try:
            tok = AutoTokenizer.from_pretrained(str(path) if path.exists() else str(name_or_path))
        except OSError as e:
            raise UserError(f"cannot load tokenizer '{name_or_path}' ({first_line(e)}); with no network use "
                            "--tokenizer bundled or a local folder") from e
    for special in ('cls_token_id', 'sep_token_id', 'pad_token_id', 'mask_token_id'):
        if getattr(tok, special, None) is None:
            raise UserError(f"tokenizer '{name_or_path}' has no {special[:-3]}; ELECTRA needs [CLS] [SEP] [PAD] [MASK]")
    return tok


def text_to_ids(tokenizer, texts):
    """WordPiece ids of user text (a list of strings), without [CLS] / [SEP] added.

    A literal "[MASK]", "[PAD]" or "[SEP]" in a corpus line or a GLUE sentence is split like any other text
    ("[", "mask", "]"), as the official tokenizer does: only the example builders put special tokens in (an
    unknown character still becomes [UNK], as there).
    verbose=False: a line longer than the model's 512 positions would warn, but the callers truncate.
    """
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)['input_ids']


def tokenizer_fingerprint(tokenizer):
    """A hash of everything that decides the ids: vocab, normalizer, pre-tokenizer, special tokens."""
    state = tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, 'is_fast', False) else \
        json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(state.encode()).hexdigest()[:12]


def looks_like_path(s):
    """A string meant as a local path, not a hub id (those look like 'name' or 'owner/name'): the one test the
    tokenizer, corpus and model sources (`sources.resolve_model`) share, so that a mistyped path is refused as
    missing rather than looked up on the hub."""
    return s.startswith(('.', '/', '~')) or s.endswith(('.txt', '.json', '.pth', '.pt')) or s.count('/') > 1


# ---------------------------------------------------------------------------------------------------------------
# The example builder (RECIPE.md, "Pretraining data")
# ---------------------------------------------------------------------------------------------------------------
class ExampleBuilder:
    """Packs the tokenized lines of documents into examples of at most `max_length` tokens, as the official code.

    Lines accumulate until their running length reaches the target length; the line that crosses is kept whole
    (then trimmed); examples never cross documents. With probability 0.05 the *next* example's target length is
    uniform in [5, max_length].
    """

    def __init__(self, max_length, cls_id, sep_id, rng, single_segment_prob=0.1, short_length_prob=0.05):
        self.max_length, self.cls_id, self.sep_id, self.rng = max_length, cls_id, sep_id, rng
        self.single_segment_prob, self.short_length_prob = single_segment_prob, short_length_prob
        self.target_length = max_length
        self.lines, self.length = [], 0

    def add_line(self, ids):
        """Add one tokenized line; returns a finished example (list of ids) or None."""
        if not ids: return None
        self.lines.append(ids)
        self.length += len(ids)
        return self.create_example() if self.length >= self.target_length else None

    def end_document(self):
        """The document's tail becomes its own (possibly short) example."""
        return self.create_example() if self.lines else None

    def create_example(self):
        # 10% of examples have one segment only; otherwise A is filled up to (target-3)//2
        if self.rng.random() < self.single_segment_prob: first_target = float('inf')
        else: first_target = (self.target_length - 3) // 2
        a, b = [], []
        for line in self.lines:
            # The line goes to A if A is empty, if it fits, or on a coin flip when it would cross A's target
            # (only while B is still empty).
            if (not a or len(a) + len(line) < first_target
                    or (not b and len(a) < first_target and self.rng.random() < 0.5)):
                a += line
            else:
                b += line
        a = a[:self.max_length - 2]                              # room for [CLS] and [SEP]
        b = b[:max(0, self.max_length - len(a) - 3)]              # room for the last [SEP]
        self.lines, self.length = [], 0
        # The *next* example gets a random short target length 5% of the time
        if self.rng.random() < self.short_length_prob: self.target_length = self.rng.randint(5, self.max_length)
        else: self.target_length = self.max_length
        ids = [self.cls_id] + a + [self.sep_id]
        types = [0] * len(ids)
        if b:
            ids += b + [self.sep_id]
            types += [1] * (len(b) + 1)
        return ids, types


def build_examples(documents, tokenizer, max_length, rng):
    """Documents (lists of text lines) -> list of (input_ids, token_type_ids), the official way."""
    builder = ExampleBuilder(max_length, tokenizer.cls_token_id, tokenizer.sep_token_id, rng)
    examples = []
    for lines in documents:
        lines = [l.strip() for l in lines if l.strip()]
        if not lines: continue
        ids_per_line = text_to_ids(tokenizer, lines)
        for ids in ids_per_line:
            ex = builder.add_line(ids)
            if ex: examples.append(ex)
        ex = builder.end_document()
        if ex: examples.append(ex)
    return examples


def pad_examples(examples, max_length, pad_id=0):
    """(input_ids, token_type_ids) lists -> padded arrays (N, max_length); pad id 0, token type 0 on padding."""
    ids = np.full((len(examples), max_length), pad_id, dtype=np.int32)
    types = np.zeros((len(examples), max_length), dtype=np.int8)
    for i, (x, t) in enumerate(examples):
        ids[i, :len(x)], types[i, :len(t)] = x, t
    return ids, types


# ---------------------------------------------------------------------------------------------------------------
# Corpus sources
# ---------------------------------------------------------------------------------------------------------------
def resolve_corpus(corpus):
    """-> ('local', [files]) or ('hub', (name, config)). 'bundled' is the sample shipped in datasets/wiki_sample."""
    if corpus in (None, '', 'bundled'):
        return 'local', sorted(BUNDLED_CORPUS.glob('*.txt'))
    path = Path(os.path.expanduser(str(corpus)))
    if path.is_dir():
        files = sorted(p for p in path.rglob('*.txt') if p.is_file() and not p.name.startswith('.'))
        if not files:
            raise UserError(f"corpus folder '{corpus}' holds no .txt files; put text files there "
                            "(one sentence or paragraph per line, a blank line between documents)")
        return 'local', files
    if path.is_file(): return 'local', [path]
    if looks_like_path(str(corpus)):
        raise UserError(f"corpus path '{corpus}' does not exist; give a text file, a folder of .txt files, "
                        "a Hugging Face dataset name, or 'bundled'")
    name, _, config = str(corpus).partition(':')
    return 'hub', (name, config or None)


def corpus_name(corpus, kind):
    """A short name for cache folders: the file or folder name of a local corpus, else the corpus as given."""
    if kind == 'local' and corpus not in (None, '', 'bundled'): return Path(str(corpus)).name
    return str(corpus or 'bundled')


def corpus_fingerprint(kind, source):
    if kind == 'local':
        return [(str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns) for f in source]
    return list(source)


def load_documents(kind, source, cache_dir=None):
    """A `datasets.Dataset` with one document per row in a column 'text' (lines joined by newlines)."""
    datasets = hf_datasets()
    if kind == 'local':
        sizes = [Path(f).stat().st_size for f in source]
        if sum(sizes) == 0:
            raise UserError(f"corpus {', '.join(map(str, source[:3]))} is empty; give files with text in them")
        # sample_by='paragraph' splits on blank lines: one row per document
        return datasets.load_dataset('text', data_files=[str(f) for f in source], sample_by='paragraph',
                                     split='train', cache_dir=cache_dir)
    name, config = source
    try:
        ds = datasets.load_dataset(name, config, split='train', cache_dir=cache_dir)
    except Exception as e:  # no network, unknown name, gated dataset...
        raise UserError(f"cannot load corpus '{name}' from the Hugging Face hub ({first_line(e)}); with no network "
                        "use --corpus bundled or a local folder of .txt files") from e
    if 'text' not in ds.column_names:
        raise UserError(f"hub dataset '{name}' has no 'text' column (it has {ds.column_names}); pick a text corpus")
    return ds.select_columns(['text'])


def _build_batch(batch, indices, tokenizer, max_length, seed):
    # One RNG per batch of documents, seeded by its first index: the result is the same with any num_proc
    rng = random.Random(seed * 1_000_003 + indices[0])
    documents = [doc.split('\n') for doc in batch['text']]
    examples = build_examples(documents, tokenizer, max_length, rng)
    ids, types = pad_examples(examples, max_length, tokenizer.pad_token_id)
    return {'input_ids': ids, 'token_type_ids': types}


def pretraining_examples(corpus, tokenizer, max_length, seed=0, num_proc=None, cache_root=DATASETS_DIR / 'cache',
                         verbose=True):
    """Packed pretraining examples for (corpus, tokenizer, max_length), built once and cached on disk.

    Returns a `datasets.Dataset` with 'input_ids' (int32) and 'token_type_ids' (int8), each (max_length,),
    formatted as torch tensors. The cache key holds the corpus, the tokenizer's fingerprint, max_length, the seed
    and the builder's version, so a changed tokenizer can never reuse stale ids.
    """
    datasets = hf_datasets()
    kind, source = resolve_corpus(corpus)
    key = dict(corpus=corpus_fingerprint(kind, source), tokenizer=tokenizer_fingerprint(tokenizer),
               max_length=max_length, seed=seed, builder=BUILDER_VERSION)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cache_root) / f"{slug(corpus_name(corpus, kind))}-L{max_length}-{digest}"
    if (cache_dir / 'dataset_info.json').exists():
        if verbose: say(f'Examples: cached in {cache_dir}')
        return datasets.load_from_disk(str(cache_dir)).with_format('torch')

    docs = load_documents(kind, source, cache_dir=str(Path(cache_root).parent / 'hf_cache'))  # not ~/.cache
    num_proc = num_proc or max(1, min(os.cpu_count() or 1, 8))
    features = datasets.Features({'input_ids': datasets.Sequence(datasets.Value('int32'), length=max_length),
                                  'token_type_ids': datasets.Sequence(datasets.Value('int8'), length=max_length)})
    examples = docs.map(_build_batch, batched=True, batch_size=64, with_indices=True, num_proc=min(num_proc, len(docs)),
                        remove_columns=docs.column_names, features=features, load_from_cache_file=False,
                        fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, seed=seed),
                        desc='Tokenizing and packing')
    if len(examples) == 0:
        raise UserError(f"corpus '{corpus}' holds no usable text; give files with one sentence or paragraph per line")
    # Write to a temporary folder, then rename: a killed run never leaves a half-written cache behind
    tmp = cache_dir.with_name(cache_dir.name + f'.tmp{os.getpid()}')
    examples.save_to_disk(str(tmp))
    shutil.rmtree(cache_dir, ignore_errors=True)
    tmp.rename(cache_dir)
    (cache_dir / 'cache_key.json').write_text(json.dumps(key, indent=1))
    if verbose: say(f'Examples: {len(examples):,} built from {len(docs):,} documents, cached in {cache_dir}')
    return datasets.load_from_disk(str(cache_dir)).with_format('torch')


def hf_datasets():
    """The Hugging Face `datasets` package (this project's own datasets/ folder must not stand in for it)."""
    import datasets
    if not hasattr(datasets, 'load_dataset'):
        raise UserError("the Hugging Face 'datasets' package is not installed; run: pip install -r requirements.txt")
    return datasets


# ---------------------------------------------------------------------------------------------------------------
# A WordPiece vocabulary of your own, trained on the pretraining corpus
# ---------------------------------------------------------------------------------------------------------------
# ELECTRA's special tokens at ids 0-4: [PAD] at 0 as in BERT's vocab, the others right after it rather than at
# BERT's 100-103 (ids 1-99 there are [unusedN] slots), so a small vocabulary spends no slot on unused tokens
SPECIAL_TOKENS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
MAX_ALPHABET = 1000  # characters kept, the most frequent (Hugging Face's BERT WordPiece trainer keeps 1000)
# Bump when the way a vocabulary is trained changes, so that cached tokenizers are never reused
TRAINER_VERSION = 1


def train_tokenizer(corpus='bundled', vocab_size=30_522, lowercase=True, strip_accents=None,
                    cache_root=DATASETS_DIR / 'cache'):
    """A WordPiece tokenizer of `vocab_size` tokens trained on `corpus`, as an `ElectraTokenizerFast`.

    `corpus`: what `pretraining_examples` takes ('bundled', a .txt file or folder of them, a hub dataset name).
    `lowercase` and `strip_accents` are BERT's normalizer's; strip_accents=None follows lowercase, as in BERT
    (Spanish or French text usually keeps its accents: lowercase=True, strip_accents=False). The rest is BERT's:
    its normalizer and pre-tokenizer (whitespace and punctuation split words), '##' word continuations,
    `[CLS] A [SEP] B [SEP]` with token types 0 then 1, and the special tokens [PAD] [UNK] [CLS] [SEP] [MASK] at ids
    0-4 ([PAD] at 0 as in BERT; no [unusedN] slots before the others). Pieces must occur twice (min_frequency=2);
    a corpus too small to offer `vocab_size` of them gives fewer tokens.

    Trained once, deterministically, then reused from `cache_root`/tokenizers/<key>/ (a `save_pretrained` folder that
    `load_tokenizer` reads), keyed by the corpus's files (or hub name), the settings and the tokenizers version.
    """
    import tokenizers
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(f'--vocab_size must be a whole number above {len(SPECIAL_TOKENS)} (the special tokens), got '
                        f'{vocab_size!r}; BERT uses 30522')
    if strip_accents is None: strip_accents = lowercase                     # BERT's rule
    kind, source = resolve_corpus(corpus)
    key = dict(corpus=corpus_fingerprint(kind, source), vocab_size=vocab_size, lowercase=bool(lowercase),
               strip_accents=bool(strip_accents), trainer=TRAINER_VERSION, tokenizers=tokenizers.__version__)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_root) / 'tokenizers' / f'{slug(corpus_name(corpus, kind))}-{vocab_size}-{digest}'
    if not (folder / 'tokenizer.json').exists():
        documents = load_documents(kind, source, cache_dir=str(Path(cache_root).parent / 'hf_cache'))
        tokenizer = train_wordpiece(documents, vocab_size, bool(lowercase), bool(strip_accents), corpus)
        # Write to a temporary folder, then rename: a killed run never leaves a half-written tokenizer behind
        tmp = folder.with_name(folder.name + f'.tmp{os.getpid()}')
        tokenizer.save_pretrained(str(tmp))
        (tmp / 'cache_key.json').write_text(json.dumps(key, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return load_tokenizer(folder)  # the same object whether just trained or cached


def train_wordpiece(documents, vocab_size, lowercase, strip_accents, corpus='the corpus'):
    """Train BERT's WordPiece on `documents` (a `datasets.Dataset` with a 'text' column) -> `ElectraTokenizerFast`.

    The tokenizers trainer numbers '##' continuations in hash-map order, different in every process, and breaks
    ties between equally frequent merges by those numbers; its alphabet limit drops equally rare characters at
    random. Choosing the alphabet here and naming every '##c' before training makes the vocabulary the same on
    every run.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    texts = lambda: (batch['text'] for batch in documents.iter(batch_size=1000))
    alphabet = corpus_alphabet(texts(), normalizer)
    if not alphabet:
        raise UserError(f"corpus '{corpus}' holds no usable text; give files with one sentence or paragraph per line")
    # '##c' for each character that can continue a word (punctuation and CJK characters always stand alone)
    continues_word = lambda c: len(pre_tokenizer.pre_tokenize_str(normalizer.normalize_str('a' + c))) == 1
    continuations = ['##' + c for c in alphabet if continues_word(c)]
    needed = len(SPECIAL_TOKENS) + len(alphabet) + len(continuations)
    if vocab_size < needed:
        raise UserError(f"--vocab_size {vocab_size} is too small for corpus '{corpus}': its {len(alphabet)} "
                        f"characters, {len(continuations)} '##' continuations and {len(SPECIAL_TOKENS)} special "
                        f'tokens take {needed}; give at least {needed} (BERT uses 30522)')
    backend = Tokenizer(WordPiece(unk_token='[UNK]'))
    backend.normalizer, backend.pre_tokenizer = normalizer, pre_tokenizer
    trainer = WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS + continuations,
                               initial_alphabet=alphabet, limit_alphabet=len(alphabet), show_progress=False)
    backend.train_from_iterator(texts(), trainer)
    # The trainer made every '##c' a special token too: build the tokenizer again from the vocabulary alone
    return bert_wordpiece(backend.get_vocab(), lowercase, strip_accents)


def corpus_alphabet(texts, normalizer, max_size=MAX_ALPHABET):
    """The `max_size` most frequent characters of the normalized text (ties: in code-point order), sorted.

    `texts`: batches of strings. Characters are counted raw, then normalized one by one (BERT's normalizer maps
    each character alone), which is many times faster than normalizing all the text.
    """
    raw = Counter()
    for batch in texts:
        for text in batch: raw.update(text)
    counts = Counter()
    for c, n in raw.items():
        for normalized in normalizer.normalize_str(c): counts[normalized] += n
    chars = sorted((c for c in counts if not c.isspace()), key=lambda c: (-counts[c], c))[:max_size]
    return sorted(chars)


def bert_wordpiece(vocab, lowercase, strip_accents):
    """An `ElectraTokenizerFast` made like BERT's around a WordPiece vocabulary ({token: id})."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import ElectraTokenizerFast
    backend = Tokenizer(WordPiece(vocab, unk_token='[UNK]'))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=strip_accents)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix='##')
    cls, sep = ('[CLS]', vocab['[CLS]']), ('[SEP]', vocab['[SEP]'])
    backend.post_processor = processors.TemplateProcessing(single='[CLS]:0 $A:0 [SEP]:0',
                                                           pair='[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1',
                                                           special_tokens=[cls, sep])
    backend.add_special_tokens(SPECIAL_TOKENS)
    # do_lower_case / strip_accents go into tokenizer_config.json, from which transformers rebuilds the normalizer
    return ElectraTokenizerFast(tokenizer_object=backend, do_lower_case=lowercase, strip_accents=strip_accents)


# ---------------------------------------------------------------------------------------------------------------
# Batches for a fixed number of steps
# ---------------------------------------------------------------------------------------------------------------
class StepBatches(torch.utils.data.Sampler):
    """Index batches for steps [start_step, max_steps): a fresh seeded permutation of the data every epoch.

    The global batch `batch_size` is split across `world_size` ranks; this rank gets its slice, so the global
    batch and the schedule stay the recipe's however many processes train. Resuming at `start_step` costs nothing.
    """

    def __init__(self, n_examples, batch_size, max_steps, seed=0, start_step=0, rank=0, world_size=1):
        if batch_size % world_size:
            raise UserError(f'batch_size {batch_size} is not divisible by the {world_size} processes; pick a multiple')
        self.n, self.batch_size, self.max_steps, self.seed = n_examples, batch_size, max_steps, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self.local = batch_size // world_size

    def __len__(self): return self.max_steps - self.start_step

    def _perm(self, epoch):
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start_step, self.max_steps):
            first = step * self.batch_size + self.rank * self.local  # global sample number of this rank's first
            idx = []
            for k in range(first, first + self.local):
                if k // self.n != epoch: epoch = k // self.n; perm = self._perm(epoch)
                idx.append(int(perm[k % self.n]))
            yield idx


class Batches(torch.utils.data.Dataset):
    """Reads a whole batch of examples in one call and returns (input_ids, token_type_ids, input_ids).

    The last element is the target, the original text, as fastai expects (x..., y).
    """

    def __init__(self, examples): self.examples = examples

    def __len__(self): return len(self.examples)

    def __getitem__(self, indices):
        batch = self.examples[indices]
        ids = batch['input_ids'].long()
        return ids, batch['token_type_ids'].long(), ids
