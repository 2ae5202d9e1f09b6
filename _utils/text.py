"""Text: tokenizers, corpus sources, the official example builder, and the on-disk cache of packed examples.

The path of the data (RECIPE.md, "Pretraining data"):
    corpus (hub name | local files | bundled sample) -> documents -> lines -> WordPiece ids (the bundled BERT
    vocabulary, any Hugging Face tokenizer, or one trained on the corpus: `train_tokenizer`)
    -> ExampleBuilder packs lines into `[CLS] A [SEP] B [SEP]` examples -> padded arrays cached in datasets/cache/
Masking is *not* done here: it is dynamic, re-drawn at every step (see electra.py).
"""
import hashlib
import inspect
import itertools
import json
import os
import random
import re
import shutil
import socket
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, first_line
from .files import PROJECT_DIR, process_alive, say, slug

DATASETS_DIR = PROJECT_DIR / 'datasets'
BUNDLED_VOCAB = DATASETS_DIR / 'vocab' / 'bert-uncased-vocab.txt'
BUNDLED_CORPUS = DATASETS_DIR / 'wiki_sample'
# Bump when the example builder or the way text becomes ids changes, so that old caches are never reused
# (2: literal special-token strings in the text are split like other text; 3: documents over MAX_DOCUMENT_CHARS
# are cut into parts)
BUILDER_VERSION = 3
OVERFLOW = ('drop', 'carry')  # what the example builder does with a line past the example's end
# A longer document (a file with no blank lines, say) is cut at line ends into parts of about this many characters,
# so that reading and packing it takes bounded memory; examples never cross a cut, as they never cross documents
MAX_DOCUMENT_CHARS = 1_000_000


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

    Lines accumulate until their running length reaches the target length; examples never cross documents. With
    probability 0.05 the *next* example's target length is uniform in [5, max_length]. `overflow` says what becomes
    of the line that crosses the target: 'drop' (the official code) keeps it whole, and the example's trim drops
    its tokens past the end (at 64 tokens, over half of a Wikipedia text, whose lines are paragraphs); 'carry'
    splits it where the example is full and starts the next example with the rest, so no text is lost (in the CPU
    recipe this taught the generator faster and the discriminator far slower: bench/RESULTS.md).
    """

    def __init__(self, max_length, cls_id, sep_id, rng, single_segment_prob=0.1, short_length_prob=0.05,
                 overflow='drop'):
        if overflow not in OVERFLOW: raise ValueError(f"overflow must be one of {OVERFLOW}, not {overflow!r}")
        self.max_length, self.cls_id, self.sep_id, self.rng = max_length, cls_id, sep_id, rng
        self.single_segment_prob, self.short_length_prob = single_segment_prob, short_length_prob
        self.overflow = overflow
        self.target_length = max_length
        self.lines, self.length = [], 0

    def add_line(self, ids):
        """Add one tokenized line; returns the examples it finishes (a list: with 'drop', of at most one)."""
        if self.overflow == 'drop':
            if not ids: return []
            self.lines.append(ids)
            self.length += len(ids)
            return [self.create_example()] if self.length >= self.target_length else []
        finished = []
        while ids:  # 'carry': fill the example to its target (less [CLS] and two [SEP]s), then go on with the rest
            room = self.target_length - 3 - self.length
            self.lines.append(ids[:room])
            self.length += len(self.lines[-1])
            ids = ids[room:]
            if self.length >= self.target_length - 3: finished.append(self.create_example())
        return finished

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


def build_examples(documents, tokenizer, max_length, rng, overflow='drop'):
    """Documents (lists of text lines) -> list of (input_ids, token_type_ids), the official way (with 'drop')."""
    return list(iter_examples(documents, tokenizer, max_length, rng, overflow))


def iter_examples(documents, tokenizer, max_length, rng, overflow='drop'):
    """`build_examples` one example at a time, so that the examples of many long documents are never all held as
    lists of Python ints (about 40 bytes a token, where the padded arrays take 5)."""
    builder = ExampleBuilder(max_length, tokenizer.cls_token_id, tokenizer.sep_token_id, rng, overflow=overflow)
    for lines in documents:
        lines = [l.strip() for l in lines if l.strip()]
        if not lines: continue
        for ids in text_to_ids(tokenizer, lines):
            yield from builder.add_line(ids)
        ex = builder.end_document()
        if ex: yield ex


def pad_examples(examples, max_length, pad_id=0, rows=4096):
    """(input_ids, token_type_ids) lists, from any iterable -> padded arrays (N, max_length); pad id 0, token type 0
    on padding. Filled `rows` examples at a time."""
    examples, blocks = iter(examples), []
    while True:
        block = list(itertools.islice(examples, rows))
        ids = np.full((len(block), max_length), pad_id, dtype=np.int32)
        types = np.zeros((len(block), max_length), dtype=np.int8)
        for i, (x, t) in enumerate(block):
            ids[i, :len(x)], types[i, :len(t)] = x, t
        blocks.append((ids, types))
        if len(block) < rows: break
    return tuple(np.concatenate(arrays) for arrays in zip(*blocks))


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
    """A `datasets.Dataset` with one document per row in a column 'text' (lines joined by newlines).

    A local corpus is read into `cache_dir` again at each call (reading is fast next to tokenizing); a hub corpus's
    download is cached there.
    """
    datasets = hf_datasets()
    if kind == 'local':
        sizes = [Path(f).stat().st_size for f in source]
        if sum(sizes) == 0:
            raise UserError(f"corpus {', '.join(map(str, source[:3]))} is empty; give files with text in them")
        try:
            return datasets.Dataset.from_generator(
                read_documents, features=datasets.Features({'text': datasets.Value('string')}), cache_dir=cache_dir,
                gen_kwargs=dict(files=[str(f) for f in source],
                                corpus_key=json.dumps(corpus_fingerprint(kind, source))))
        except Exception as e:  # `datasets` wraps the reader's errors in its own
            if isinstance(e.__cause__, UserError): raise e.__cause__ from None
            raise
    name, config = source
    try:
        ds = datasets.load_dataset(name, config, split='train', cache_dir=cache_dir)
    except Exception as e:  # no network, unknown name, gated dataset...
        raise UserError(f"cannot load corpus '{name}' from the Hugging Face hub ({first_line(e)}); with no network "
                        "use --corpus bundled or a local folder of .txt files") from e
    if 'text' not in ds.column_names:
        raise UserError(f"hub dataset '{name}' has no 'text' column (it has {ds.column_names}); pick a text corpus")
    return ds.select_columns(['text'])


def read_documents(files, corpus_key=None, chunk_chars=1 << 16):
    """The documents of text files as rows {'text': ...}: the non-empty pieces of each file's text between blank
    lines (`text.split('\n\n')`, the rows of the `datasets` 'text' loader with sample_by='paragraph'), read in
    chunks, so that no more than a document is ever held. A document longer than MAX_DOCUMENT_CHARS is cut at a
    line end. `corpus_key` (the files' sizes and times) only keys `datasets`' cache of the rows.
    """
    for file in files:
        with open(file, encoding='utf-8') as f:      # universal newlines: '\r\n' and '\r' read as '\n'
            piece = ''
            try:
                while chunk := f.read(chunk_chars):
                    *documents, piece = (piece + chunk + f.readline()).split('\n\n')   # chunks end at line ends
                    yield from ({'text': d} for d in documents if d)
                    if len(piece) > MAX_DOCUMENT_CHARS:
                        yield {'text': piece}
                        piece = ''
            except UnicodeDecodeError as e:
                raise UserError(f"corpus file '{file}' is not UTF-8 text ({e.reason}); save it as UTF-8") from None
            if piece: yield {'text': piece}


BATCH_DOCUMENTS = 64  # documents packed together with one RNG (a `datasets.map` batch)


def _build_batch(batch, indices, tokenizer, max_length, seed, overflow):
    # One RNG per batch of documents, seeded by its first index; batches are the same with any num_proc (see below)
    rng = random.Random(seed * 1_000_003 + indices[0])
    documents = (doc.split('\n') for doc in batch['text'])
    ids, types = pad_examples(iter_examples(documents, tokenizer, max_length, rng, overflow), max_length,
                              tokenizer.pad_token_id)
    return {'input_ids': ids, 'token_type_ids': types}


def pretraining_examples(corpus, tokenizer, max_length, seed=0, num_proc=None, cache_root=DATASETS_DIR / 'cache',
                         verbose=True, overflow='drop'):
    """Packed pretraining examples for (corpus, tokenizer, max_length), built once and cached on disk.

    Returns a `datasets.Dataset` with 'input_ids' (int32) and 'token_type_ids' (int8), each (max_length,),
    formatted as torch tensors. The cache key holds the corpus, the tokenizer's fingerprint, max_length, the seed,
    the builder's version and `overflow` (`ExampleBuilder`), so a changed tokenizer can never reuse stale ids.
    """
    datasets = hf_datasets()
    kind, source = resolve_corpus(corpus)
    key = dict(corpus=corpus_fingerprint(kind, source), tokenizer=tokenizer_fingerprint(tokenizer),
               max_length=max_length, seed=seed, builder=BUILDER_VERSION)
    if overflow != 'drop': key['overflow'] = overflow  # so the caches built before the option keep their key
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cache_root) / f"{slug(corpus_name(corpus, kind))}-L{max_length}-{digest}"
    remove_abandoned_builds(Path(cache_root))
    if is_built(cache_dir, key):
        if verbose: say(f'Examples: cached in {cache_dir}')
        return datasets.load_from_disk(str(cache_dir)).with_format('torch')

    with building(cache_dir) as work:      # everything written goes into `work` until the finished cache is renamed
        docs = load_documents(kind, source, cache_dir=documents_dir(kind, cache_root, work))
        n_documents = len(docs)
        num_proc = min(num_proc or max(1, min(os.cpu_count() or 1, 8)), -(-n_documents // BATCH_DOCUMENTS))
        if num_proc > 1:
            # `map` gives each process a contiguous shard of equal size: with the documents padded to a multiple of
            # num_proc batches (empty documents give no example), every shard starts a batch, so the batches and
            # their RNGs, and the examples, are those of one process
            padding = datasets.Dataset.from_dict({'text': [''] * (-n_documents % (BATCH_DOCUMENTS * num_proc))},
                                                 features=docs.features)
            docs = datasets.concatenate_datasets([docs, padding])
        features = datasets.Features({'input_ids': datasets.Sequence(datasets.Value('int32'), length=max_length),
                                      'token_type_ids': datasets.Sequence(datasets.Value('int8'), length=max_length)})
        # One process: packed here (datasets 4+ would fork one worker for num_proc=1); the result is the same
        examples = docs.map(_build_batch, batched=True, batch_size=BATCH_DOCUMENTS, with_indices=True,
                            num_proc=num_proc if num_proc > 1 else None,
                            remove_columns=docs.column_names, features=features, load_from_cache_file=False,
                            cache_file_name=str(work / 'packed.arrow'),
                            fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, seed=seed, overflow=overflow),
                            desc='Tokenizing and packing')
        if len(examples) == 0:
            raise UserError(f"corpus '{corpus}' holds no usable text; give files with one sentence or paragraph per "
                            "line")
        examples.save_to_disk(str(work / 'examples'))
        publish(work / 'examples', cache_dir, key)
        built = f'Examples: {len(examples):,} built from {n_documents:,} documents, cached in {cache_dir}'
        del docs, examples  # their files in `work` are deleted next
    if verbose: say(built)
    return datasets.load_from_disk(str(cache_dir)).with_format('torch')


def documents_dir(kind, cache_root, work):
    """Where `load_documents` puts the documents: a local corpus in the build's own folder (no copy of it stays
    behind), a hub corpus's download in datasets/hf_cache beside the cache (not ~/.cache), kept for later builds."""
    return str(work / 'documents') if kind == 'local' else str(Path(cache_root).parent / 'hf_cache')


# ---------------------------------------------------------------------------------------------------------------
# Caches built whole or not at all
# ---------------------------------------------------------------------------------------------------------------
def is_built(folder, key):
    """`folder` holds a finished build for `key`: its cache_key.json, the last file a build writes, says so."""
    try: return json.loads((Path(folder) / 'cache_key.json').read_text()) == json.loads(json.dumps(key))
    except (OSError, ValueError): return False


@contextmanager
def building(folder):
    """A fresh folder to build `folder` in, beside it and named for this process ('<name>.tmp<pid>@<host>'), removed
    when the block ends, however it ends. A build killed outright leaves it behind: `remove_abandoned_builds`."""
    work = folder.with_name(f'{folder.name}.tmp{os.getpid()}@{socket.gethostname()}')
    shutil.rmtree(work, ignore_errors=True)  # left by a dead process that had this process's id
    work.mkdir(parents=True)
    try: yield work
    finally: shutil.rmtree(work, ignore_errors=True)


def publish(built, folder, key):
    """Make the finished folder `built` the cache `folder`: cache_key.json written into it, then one rename. A build
    killed at any moment leaves no `folder` or a finished one, never a `folder` that looks finished and is not."""
    (built / 'cache_key.json').write_text(json.dumps(key, indent=1))
    for _ in range(3):
        try: return built.rename(folder)
        except OSError:                                      # `folder` is there
            if is_built(folder, key): return                 # built meanwhile by another process: the same
            shutil.rmtree(folder, ignore_errors=True)        # unfinished (a build of an older version)
    built.rename(folder)


def remove_abandoned_builds(folder):
    """Delete the build folders ('<name>.tmp<pid>[@<host>]') in `folder` of processes that are gone: a build killed
    outright leaves one, as big as what it had written. Those of live processes and of other hosts stay."""
    host = socket.gethostname()
    for path in Path(folder).glob('*.tmp*'):
        owner = re.fullmatch(r'.+\.tmp(\d+)(?:@(.+))?', path.name)
        if owner and path.is_dir() and (owner[2] or host) == host and not process_alive(int(owner[1])):
            shutil.rmtree(path, ignore_errors=True)


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
    remove_abandoned_builds(folder.parent)
    if not is_built(folder, key):
        with building(folder) as work:
            documents = load_documents(kind, source, cache_dir=documents_dir(kind, cache_root, work))
            tokenizer = train_wordpiece(documents, vocab_size, bool(lowercase), bool(strip_accents), corpus)
            tokenizer.save_pretrained(str(work / 'tokenizer'))
            publish(work / 'tokenizer', folder, key)
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
