"""Pretraining data, as RECIPE.md states it ("Model sizes": the vocabulary; "Pretraining data": the example builder)."""
import math
import random

import pytest
import torch

from _utils.errors import UserError
from _utils.text import (ExampleBuilder, StepBatches, build_examples, load_tokenizer, pad_examples,
                         pretraining_examples)

CLS, SEP, MASK = 101, 102, 103


@pytest.fixture(scope='module')
def tokenizer():
    return load_tokenizer('bundled')


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """Keep the `datasets` text-loader cache out of ~/.cache and the repo."""
    import datasets
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', tmp_path / 'hf_datasets')
    return tmp_path


def assert_rate(hits, n, p, sigmas=4):
    """`hits` out of `n` is within `sigmas` standard errors of the rate `p`."""
    se = math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) < sigmas * se, f'observed rate {hits / n:.4f}, expected {p:.4f} +- {sigmas * se:.4f}'


def feed(builder, lines_per_doc, n_docs, line):
    """Examples from `n_docs` documents, each of `lines_per_doc` copies of `line()`."""
    examples = []
    for _ in range(n_docs):
        for _ in range(lines_per_doc):
            examples += builder.add_line(line())
        ex = builder.end_document()
        if ex: examples.append(ex)
    return examples


def segments(ids, types):
    """(A, B) without the special tokens of `[CLS] A [SEP] B [SEP]`."""
    n_a = types.count(0)
    return ids[1:n_a - 1], ids[n_a:-1]


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------------------
def test_bundled_vocab_is_bert_uncased_30522_tokens(tokenizer):
    assert len(tokenizer) == 30_522


def test_bundled_vocab_special_ids(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id) == (0, 100, 101, 102, 103)


def test_bundled_tokenizer_lower_cases_and_strips_accents(tokenizer):
    assert tokenizer('Héllo WORLD', add_special_tokens=False)['input_ids'] == \
        tokenizer('hello world', add_special_tokens=False)['input_ids']


def test_missing_tokenizer_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        load_tokenizer(str(tmp_path / 'no_such_vocab.txt'))


# ---------------------------------------------------------------------------------------------------------------
# The example builder
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def word_pools(tokenizer):
    """8 disjoint pools of 40 whole-word tokens, each word a single id: a document's tokens reveal its pool."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isascii() and w.isalpha() and w.islower() and len(w) > 3)
    ids = tokenizer(words, add_special_tokens=False)['input_ids']
    single = [w for w, i in zip(words, ids) if len(i) == 1]
    random.Random(0).shuffle(single)
    return [single[k * 40:(k + 1) * 40] for k in range(8)]


def test_examples_never_cross_documents(tokenizer, word_pools):
    rng = random.Random(1)
    documents, pool_ids = [], []
    for k in range(40):
        pool = word_pools[k % 8]
        # lengths from a few tokens to several examples' worth, so that documents end mid-example
        documents.append([' '.join(rng.choices(pool, k=rng.randint(1, 30))) for _ in range(rng.randint(1, 25))])
        pool_ids.append(set(tokenizer.convert_tokens_to_ids(pool)))
    examples = build_examples(documents, tokenizer, 64, random.Random(0))
    # Consecutive documents use disjoint pools: an example that crossed a document boundary would mix two pools
    for ids, _ in examples:
        body = set(ids) - {CLS, SEP}
        assert any(body <= pool for pool in pool_ids[:8]), 'an example mixes tokens of two documents'
    assert len(examples) > 40  # some documents gave several examples


def test_layout_cls_a_sep_b_sep_with_token_types_0_then_1(tokenizer, word_pools):
    rng = random.Random(2)
    documents = [[' '.join(rng.choices(word_pools[0], k=8)) for _ in range(40)] for _ in range(5)]
    examples = build_examples(documents, tokenizer, 64, random.Random(0))
    two_segments = 0
    for ids, types in examples:
        n_a = types.count(0)
        assert ids[0] == CLS and ids[n_a - 1] == SEP and ids[-1] == SEP
        assert types == [0] * n_a + [1] * (len(ids) - n_a)
        assert [i for i in ids if i in (CLS, SEP)] == ([CLS, SEP, SEP] if n_a < len(ids) else [CLS, SEP])
        two_segments += n_a < len(ids)
    assert two_segments > 0


def test_examples_are_at_most_max_length_even_with_overlong_lines(tokenizer, word_pools):
    rng = random.Random(3)
    documents = [[' '.join(rng.choices(word_pools[1], k=rng.choice([3, 20, 200]))) for _ in range(10)]
                 for _ in range(20)]
    examples = build_examples(documents, tokenizer, 48, random.Random(0))
    assert max(len(ids) for ids, _ in examples) == 48
    assert all(len(ids) == len(types) for ids, types in examples)


def test_crossing_line_is_kept_then_trimmed_and_overflow_discarded():
    # Lines of 10 tokens with target 128: the 13th line crosses (130 >= 128) and closes the example; its overflow
    # is cut (A + B trimmed to 128 - 3) and *not* carried over: the next example starts with the 14th line.
    builder = ExampleBuilder(128, CLS, SEP, random.Random(0), single_segment_prob=0.0, short_length_prob=0.0)
    lines = [list(range(1000 + 10 * k, 1010 + 10 * k)) for k in range(26)]
    examples = [ex for line in lines for ex in builder.add_line(line)]
    assert len(examples) == 2
    (ids0, types0), (ids1, types1) = examples
    assert len(ids0) == 128
    a0, b0 = segments(ids0, types0)
    assert a0 + b0 == [t for line in lines[:13] for t in line][:125]
    a1, b1 = segments(ids1, types1)
    assert (a1 + b1)[0] == lines[13][0]


def test_carry_splits_the_crossing_line_and_starts_the_next_example_with_its_rest():
    # The same 26 lines of 10 tokens with overflow='carry': every example's body is 128 - 3 = 125 tokens of the text
    # in order, the crossing line split where the example is full; the tail is the document's last example.
    builder = ExampleBuilder(128, CLS, SEP, random.Random(0), single_segment_prob=0.0, short_length_prob=0.0,
                             overflow='carry')
    lines = [list(range(1000 + 10 * k, 1010 + 10 * k)) for k in range(26)]
    examples = [ex for line in lines for ex in builder.add_line(line)] + [builder.end_document()]
    bodies = [a + b for a, b in (segments(ids, types) for ids, types in examples)]
    assert [len(b) for b in bodies] == [125, 125, 10]
    assert sum(bodies, []) == [t for line in lines for t in line]          # every token once, in order


def test_carry_cuts_a_line_longer_than_several_examples_and_loses_nothing(tokenizer, word_pools):
    rng = random.Random(4)
    documents = [[' '.join(rng.choices(word_pools[2], k=rng.choice([3, 20, 200, 400]))) for _ in range(6)]
                 for _ in range(10)]
    examples = build_examples(documents, tokenizer, 48, random.Random(0), overflow='carry')
    dropped = build_examples(documents, tokenizer, 48, random.Random(0))
    text = sum(len(ids) for doc in documents for ids in tokenizer(doc, add_special_tokens=False)['input_ids'])
    body = lambda exs: sum(t not in (CLS, SEP) for ids, _ in exs for t in ids)
    assert body(examples) == text > body(dropped)
    assert max(len(ids) for ids, _ in examples) == 48
    for ids, types in examples:
        n_a = types.count(0)
        assert ids[0] == CLS and ids[n_a - 1] == SEP and ids[-1] == SEP and len(ids) == len(types)


def test_carry_fills_each_example_to_its_target_length_short_targets_included():
    # Documents of 20 lines of 50 tokens, max_length 64: each example's body is its target less [CLS] and two [SEP]s
    body = lambda ids: sum(t != CLS and t != SEP for t in ids)
    full = ExampleBuilder(64, CLS, SEP, random.Random(0), short_length_prob=0.0, overflow='carry')
    assert [body(ids) for ids, _ in feed(full, 20, 5, lambda: [2000] * 50)] == ([61] * 16 + [24]) * 5
    short = ExampleBuilder(64, CLS, SEP, random.Random(0), short_length_prob=1.0, overflow='carry')
    bodies = [body(ids) for ids, _ in feed(short, 20, 5, lambda: [2000] * 50)]
    assert bodies[0] == 61 and sum(bodies) == 5 * 1000 and len(set(bodies)) > 10   # random targets, nothing lost


def test_unknown_overflow_is_refused():
    with pytest.raises(ValueError, match='overflow'):
        ExampleBuilder(64, CLS, SEP, random.Random(0), overflow='wrap')


def test_tail_of_a_document_is_its_own_short_example():
    builder = ExampleBuilder(128, CLS, SEP, random.Random(0))
    assert builder.add_line([2000] * 10) == [] and builder.add_line([2001] * 10) == []
    ids, types = builder.end_document()
    assert sorted(set(ids) - {CLS, SEP}) == [2000, 2001] and len(ids) <= 23


def test_segment_a_fills_to_half_the_target_with_a_coin_flip_for_the_borderline_line():
    # Target 128: A's target is (128 - 3) // 2 = 62. With 10-token lines A holds 6 lines (60 tokens), and the
    # 7th (crossing 62) goes to A on a coin flip: A is 60 or 70 tokens, each half the time.
    builder = ExampleBuilder(128, CLS, SEP, random.Random(0), single_segment_prob=0.0, short_length_prob=0.0)
    examples = feed(builder, 13, 2000, lambda: [2000] * 10)
    a_lengths = [len(segments(ids, types)[0]) for ids, types in examples]
    assert set(a_lengths) == {60, 70}
    assert_rate(a_lengths.count(70), len(a_lengths), 0.5)


def test_one_example_in_ten_has_a_single_segment():
    # 13 lines of 10 tokens per example: with two segments B is never empty, so B empty <=> single segment.
    builder = ExampleBuilder(128, CLS, SEP, random.Random(0), short_length_prob=0.0)
    examples = feed(builder, 13, 4000, lambda: [2000] * 10)
    single = sum(1 not in types for _, types in examples)
    assert_rate(single, len(examples), 0.1)


def test_one_example_in_twenty_gets_a_short_target_length_uniform_in_5_to_max():
    # With 1-token lines an example closes exactly at its target length t, so its body holds t tokens; a body
    # shorter than max_length - 4 means a short target was drawn, which happens with probability
    # 0.05 * P(t < max_length - 4) for t uniform in [5, max_length].
    max_length = 64
    builder = ExampleBuilder(max_length, CLS, SEP, random.Random(0), single_segment_prob=0.0)
    examples = feed(builder, max_length * 10_000, 1, lambda: [2000])
    bodies = [sum(t != CLS and t != SEP for t in ids) for ids, _ in examples]
    short = [b for b in bodies if b < max_length - 4]
    assert min(bodies) >= 5
    assert_rate(len(short), len(bodies), 0.05 * (max_length - 4 - 5) / (max_length - 5 + 1))


def test_the_first_example_has_the_full_target_length():
    builder = ExampleBuilder(64, CLS, SEP, random.Random(0), short_length_prob=1.0)
    examples = feed(builder, 200, 1, lambda: [2000])
    assert len(examples[0][0]) == 64      # the 5% draw applies to the *next* example
    assert len(examples[1][0]) < 64 or len(examples[2][0]) < 64


def test_pad_examples_pads_ids_and_token_types_with_0():
    ids, types = pad_examples([([CLS, 7, SEP, 8, SEP], [0, 0, 0, 1, 1]), ([CLS, 9, SEP], [0, 0, 0])], 8)
    assert ids.tolist() == [[CLS, 7, SEP, 8, SEP, 0, 0, 0], [CLS, 9, SEP, 0, 0, 0, 0, 0]]
    assert types.tolist() == [[0, 0, 0, 1, 1, 0, 0, 0], [0] * 8]


def test_pad_examples_takes_the_examples_one_at_a_time():
    examples = [([CLS, 2000 + k, SEP], [0, 0, 0]) for k in range(7)]
    ids, types = pad_examples(iter(examples), 4, rows=3)          # blocks of 3: never all 7 as lists at once
    assert ids.tolist() == [[CLS, 2000 + k, SEP, 0] for k in range(7)] and types.tolist() == [[0] * 4] * 7


# ---------------------------------------------------------------------------------------------------------------
# The cache of packed examples
# ---------------------------------------------------------------------------------------------------------------
def write_corpus(path):
    path.write_text('the cat sat on the mat.\nthe dog ran after it.\nthen both slept.\n\n'
                    'an apple fell from the tree.\nnobody saw it.\n\n'
                    'rain came in the night.\nthe river rose.\nthe bridge held.\n', encoding='utf-8')
    return path


def column(ds, name):
    return ds[:][name]    # (N, max_length) tensor


def small_tokenizer(tmp_path):
    """A different WordPiece vocabulary: every word gets another id than in the bundled one."""
    words = sorted(set('the cat sat on mat dog ran after it then both slept an apple fell from tree nobody saw rain '
                       'came in night river rose bridge held'.split()))
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '.'] + words
    (tmp_path / 'vocab.txt').write_text('\n'.join(vocab) + '\n', encoding='utf-8')
    return load_tokenizer(str(tmp_path / 'vocab.txt'))


def test_changed_tokenizer_gets_its_own_cache_and_never_reuses_ids(tokenizer, hf_home, tmp_path):
    corpus, cache = write_corpus(tmp_path / 'corpus.txt'), tmp_path / 'cache'
    bert = pretraining_examples(str(corpus), tokenizer, 32, num_proc=1, cache_root=cache, verbose=False)
    other_tok = small_tokenizer(tmp_path)
    other = pretraining_examples(str(corpus), other_tok, 32, num_proc=1, cache_root=cache, verbose=False)
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2
    assert int(column(other, 'input_ids').max()) < len(other_tok) < 100   # all ids are the small vocab's
    assert int(column(bert, 'input_ids').max()) > 1000
    text = ' '.join(other_tok.decode(row, skip_special_tokens=True) for row in column(other, 'input_ids'))
    assert 'apple fell from the tree' in text and '[UNK]' not in text


def test_carry_gets_its_own_cache_and_keeps_the_text_the_official_builder_drops(tokenizer, hf_home, tmp_path):
    # At 8 tokens a line of 6-7 words crosses the target: the official builder drops its rest, `carry` keeps it all
    corpus, cache = write_corpus(tmp_path / 'corpus.txt'), tmp_path / 'cache'
    dropped = pretraining_examples(str(corpus), tokenizer, 8, num_proc=1, cache_root=cache, verbose=False)
    carried = pretraining_examples(str(corpus), tokenizer, 8, num_proc=1, cache_root=cache, verbose=False,
                                   overflow='carry')
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2
    body = lambda ds: [t for row in column(ds, 'input_ids').tolist() for t in row if t not in (0, CLS, SEP)]
    lines = [line for line in corpus.read_text().splitlines() if line]
    text = [t for ids in tokenizer(lines, add_special_tokens=False)['input_ids'] for t in ids]
    assert body(carried) == text and len(body(dropped)) < len(text)
    again = pretraining_examples(str(corpus), tokenizer, 8, num_proc=1, cache_root=cache, verbose=False,
                                 overflow='carry')
    assert torch.equal(column(again, 'input_ids'), column(carried, 'input_ids'))


def test_same_tokenizer_and_corpus_reuse_the_cache(tokenizer, hf_home, tmp_path):
    corpus, cache = write_corpus(tmp_path / 'corpus.txt'), tmp_path / 'cache'
    first = pretraining_examples(str(corpus), tokenizer, 32, num_proc=1, cache_root=cache, verbose=False)
    again = pretraining_examples(str(corpus), tokenizer, 32, num_proc=1, cache_root=cache, verbose=False)
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 1
    assert torch.equal(column(first, 'input_ids'), column(again, 'input_ids'))


def test_cached_examples_are_padded_int_arrays_of_max_length(tokenizer, hf_home, tmp_path):
    ds = pretraining_examples(str(write_corpus(tmp_path / 'c.txt')), tokenizer, 32, num_proc=1,
                              cache_root=tmp_path / 'cache', verbose=False)
    ids, types = column(ds, 'input_ids'), column(ds, 'token_type_ids')
    assert ids.shape == types.shape == (len(ds), 32)
    assert (ids[:, 0] == CLS).all()
    assert (ids == 0).any() and (types[ids == 0] == 0).all()


def test_special_token_strings_in_a_corpus_line_never_become_special_ids(tokenizer, hf_home, tmp_path):
    corpus = tmp_path / 'specials.txt'
    corpus.write_text('the cat [PAD] sat on the [MASK] mat.\nthe dog [SEP] ran [CLS] after it.\n\n'
                      '[MASK] [MASK] [PAD]\nnobody saw [UNK] it.\n', encoding='utf-8')
    ds = pretraining_examples(str(corpus), tokenizer, 64, num_proc=1, cache_root=tmp_path / 'cache', verbose=False)
    for ids, types in zip(column(ds, 'input_ids').tolist(), column(ds, 'token_type_ids').tolist()):
        n = ids.index(0) if 0 in ids else len(ids)                    # real tokens, then only padding
        assert set(ids[n:]) <= {0} and ids[0] == CLS
        body = ids[1:n]
        assert MASK not in body and CLS not in body and 0 not in body and 100 not in body
        assert [i for i, t in enumerate(ids[:n]) if t == SEP] == \
            [i for i in range(n) if i == n - 1 or types[i] == 0 and types[i + 1] == 1]   # only the builder's [SEP]s
    text = ' '.join(tokenizer.decode(row[1:]) for row in column(ds, 'input_ids').tolist())
    assert '[ mask ] [ mask ] [ pad ]' in text


def test_missing_corpus_path_is_a_user_error(tokenizer, tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        pretraining_examples(str(tmp_path / 'missing.txt'), tokenizer, 32, cache_root=tmp_path / 'cache')


def test_empty_corpus_file_is_a_user_error(tokenizer, hf_home, tmp_path):
    (tmp_path / 'empty.txt').write_text('')
    with pytest.raises(UserError, match='empty'):
        pretraining_examples(str(tmp_path / 'empty.txt'), tokenizer, 32, num_proc=1, cache_root=tmp_path / 'cache')


def test_blank_corpus_file_is_a_user_error(tokenizer, hf_home, tmp_path):
    (tmp_path / 'blank.txt').write_text('\n\n   \n\n')
    with pytest.raises(UserError, match='no usable text'):
        pretraining_examples(str(tmp_path / 'blank.txt'), tokenizer, 32, num_proc=1, cache_root=tmp_path / 'cache')


def test_corpus_folder_without_txt_files_is_a_user_error(tokenizer, tmp_path):
    (tmp_path / 'corpus').mkdir()
    (tmp_path / 'corpus' / 'data.csv').write_text('a,b\n1,2\n')
    with pytest.raises(UserError, match=r'no \.txt files'):
        pretraining_examples(str(tmp_path / 'corpus'), tokenizer, 32, cache_root=tmp_path / 'cache')


# ---------------------------------------------------------------------------------------------------------------
# Batches for a fixed number of steps
# ---------------------------------------------------------------------------------------------------------------
def test_step_batches_yield_one_batch_per_remaining_step():
    batches = list(StepBatches(50, 8, max_steps=20, start_step=5))
    assert len(batches) == 15 and all(len(b) == 8 for b in batches)


def test_resuming_at_start_step_gives_exactly_the_tail_of_the_full_run():
    full = list(StepBatches(37, 8, max_steps=30, seed=3))
    resumed = list(StepBatches(37, 8, max_steps=30, seed=3, start_step=12))
    assert resumed == full[12:]


def test_every_epoch_is_a_permutation_of_the_data():
    flat = [i for b in StepBatches(40, 8, max_steps=10, seed=0) for i in b]    # 80 samples = 2 epochs
    assert sorted(flat[:40]) == sorted(flat[40:]) == list(range(40))
    assert flat[:40] != flat[40:]                                             # reshuffled each epoch


def test_two_ranks_see_disjoint_halves_of_each_global_batch():
    full = list(StepBatches(37, 8, max_steps=12, seed=1))
    rank0 = list(StepBatches(37, 8, max_steps=12, seed=1, rank=0, world_size=2))
    rank1 = list(StepBatches(37, 8, max_steps=12, seed=1, rank=1, world_size=2))
    for g, r0, r1 in zip(full, rank0, rank1, strict=True):
        assert len(r0) == len(r1) == 4 and r0 + r1 == g


def test_batch_size_not_divisible_by_world_size_is_a_user_error():
    with pytest.raises(UserError, match='divisible'):
        StepBatches(100, 10, max_steps=5, world_size=3)
