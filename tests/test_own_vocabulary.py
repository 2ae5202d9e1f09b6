"""A WordPiece vocabulary of your own, trained on the pretraining corpus (`--tokenizer train`): BERT's tokenizer in
every way but its vocabulary, the same on every run, trained once, and carried by checkpoints like the bundled one."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import _utils.text as text
from _utils.checkpoint import load_checkpoint, make_checkpoint, tokenizer_from_checkpoint
from _utils.errors import UserError
from _utils.pretraining import build_electra
from _utils.text import SPECIAL_TOKENS, load_tokenizer, text_to_ids, tokenizer_fingerprint, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ['The Canción of the north was first performed in 1821, in Seville.',
          'Anarchism is a political philosophy that advocates self-governed societies.']
SPANISH = ['La canción de la noche es una canción antigua.', 'Canción, canción: el corazón de la canción.',
           'El corazón canta la canción de la mañana.'] * 20


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """Tokenizer caches (and the `datasets` text-loader cache beside them) out of the project's datasets/."""
    return tmp_path_factory.mktemp('own_vocab') / 'cache'


@pytest.fixture(scope='module')
def wiki_tokenizer(cache):
    return train_tokenizer('bundled', vocab_size=1000, cache_root=cache)


@pytest.fixture(scope='module')
def spanish_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp('spanish') / 'canciones.txt'
    path.write_text('\n'.join(SPANISH) + '\n', encoding='utf-8')
    return path


def spanish(corpus, cache, **settings):
    tokenizer = train_tokenizer(str(corpus), vocab_size=200, cache_root=cache, **settings)
    return tokenizer.decode(tokenizer('Canción')['input_ids'], skip_special_tokens=True)


def test_the_vocabulary_has_the_size_asked_and_electras_special_tokens_at_ids_0_to_4(wiki_tokenizer):
    assert len(wiki_tokenizer) == 1000
    assert wiki_tokenizer.convert_ids_to_tokens(range(5)) == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    assert (wiki_tokenizer.pad_token_id, wiki_tokenizer.unk_token_id, wiki_tokenizer.cls_token_id,
            wiki_tokenizer.sep_token_id, wiki_tokenizer.mask_token_id) == (0, 1, 2, 3, 4)


def test_a_pair_is_cls_a_sep_b_sep_with_token_types_0_then_1_as_in_bert(wiki_tokenizer):
    encoded = wiki_tokenizer('the', 'north')
    a, b = text_to_ids(wiki_tokenizer, ['the', 'north'])
    assert encoded['input_ids'] == [2, *a, 3, *b, 3]
    assert encoded['token_type_ids'] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_the_saved_tokenizer_loads_back_with_the_same_ids(wiki_tokenizer, tmp_path):
    wiki_tokenizer.save_pretrained(str(tmp_path / 'tokenizer'))
    for folder in (tmp_path / 'tokenizer', wiki_tokenizer.name_or_path):  # a copy, and the cache itself
        loaded = load_tokenizer(str(folder))
        assert text_to_ids(loaded, SAMPLE) == text_to_ids(wiki_tokenizer, SAMPLE)
        assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(wiki_tokenizer)   # the data cache is reused
        assert loaded.convert_ids_to_tokens(range(5)) == SPECIAL_TOKENS


def test_training_is_deterministic(wiki_tokenizer, tmp_path):
    again = train_tokenizer('bundled', vocab_size=1000, cache_root=tmp_path / 'cache')  # trained afresh
    assert again.backend_tokenizer.to_str() == wiki_tokenizer.backend_tokenizer.to_str()


def test_a_second_call_takes_the_cached_tokenizer_without_training(wiki_tokenizer, cache, monkeypatch):
    saved = Path(wiki_tokenizer.name_or_path) / 'tokenizer.json'
    assert saved.parent.parent == cache / 'tokenizers'
    written = saved.stat().st_mtime_ns

    def no_training(*args, **kwargs): raise AssertionError('trained again')
    monkeypatch.setattr(text, 'train_wordpiece', no_training)
    again = train_tokenizer('bundled', vocab_size=1000, cache_root=cache)
    assert again.backend_tokenizer.to_str() == wiki_tokenizer.backend_tokenizer.to_str()
    assert saved.stat().st_mtime_ns == written
    with pytest.raises(AssertionError, match='trained again'):  # other settings: another tokenizer
        train_tokenizer('bundled', vocab_size=1001, cache_root=cache)


def test_strip_accents_follows_lowercase_unless_set(spanish_corpus, cache):
    assert spanish(spanish_corpus, cache) == 'cancion'                                  # BERT uncased
    assert spanish(spanish_corpus, cache, strip_accents=False) == 'canción'             # lower case, accents kept
    assert spanish(spanish_corpus, cache, lowercase=False) == 'Canción'                 # cased: accents kept too


def test_a_checkpoint_carries_the_vocabulary(wiki_tokenizer, spanish_corpus, cache, tmp_path):
    cased = train_tokenizer(str(spanish_corpus), vocab_size=200, lowercase=False, cache_root=cache)
    for tokenizer in (wiki_tokenizer, cased):
        electra = build_electra('tiny', tokenizer, max_length=32)
        saved = tokenizer_from_checkpoint(make_checkpoint(electra, tokenizer, {}, step=0, total_steps=1))
        assert text_to_ids(saved, SAMPLE + SPANISH[:3]) == text_to_ids(tokenizer, SAMPLE + SPANISH[:3])
        assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(tokenizer)
        # saved the Hugging Face way (as export_huggingface does) and loaded again: still the same ids, case kept
        saved.save_pretrained(str(tmp_path / 'export'))
        assert text_to_ids(load_tokenizer(str(tmp_path / 'export')), SPANISH[:3]) == text_to_ids(tokenizer, SPANISH[:3])


@pytest.mark.parametrize('vocab_size, message', [(0, 'must be a whole number above 5'),
                                                 (-3, 'must be a whole number above 5'),
                                                 (100, 'too small for corpus .*give at least')])
def test_a_vocabulary_size_too_small_is_one_clear_line(vocab_size, message, cache):
    with pytest.raises(UserError, match=message) as error:
        train_tokenizer('bundled', vocab_size=vocab_size, cache_root=cache)
    assert '\n' not in str(error.value)


def test_a_corpus_without_text_is_one_clear_line(cache):
    with pytest.raises(UserError, match='holds no usable text') as error:
        train_tokenizer(str(ROOT / 'tests' / 'fixtures' / 'text' / 'no_text.txt'), vocab_size=1000, cache_root=cache)
    assert '\n' not in str(error.value)


@pytest.mark.slow
def test_pretrain_py_trains_its_vocabulary_saves_it_beside_the_run_and_resumes_with_it(tmp_path):
    def pretrain(*args):
        res = subprocess.run([sys.executable, 'pretrain.py', '--size', 'tiny', '--compile', 'none', '--batch_size', '4',
                              '--max_length',
                              '32', '--precision', 'fp32', '--device', 'cpu', '--logger', 'csv',
                              '--checkpoint_fractions', '1', '--checkpoint_dir', str(tmp_path / 'ckpt'),
                              '--log_dir', str(tmp_path / 'logs'), '--data_cache', str(tmp_path / 'cache'), *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**os.environ, 'OMP_NUM_THREADS': '1', 'ELECTRA_ARGS': ''})
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout

    out = pretrain('--tokenizer', 'train', '--vocab_size', '1000', '--max_steps', '2')
    folder = tmp_path / 'logs' / 'demo_seed0' / 'tokenizer'
    assert f'Tokenizer: 1,000 WordPiece tokens trained on bundled, saved in {folder}' in out
    tokenizer = tokenizer_from_checkpoint(load_checkpoint(tmp_path / 'ckpt' / 'demo_seed0_100pct.pth'))
    assert len(tokenizer) == 1000
    assert text_to_ids(load_tokenizer(str(folder)), SAMPLE) == text_to_ids(tokenizer, SAMPLE)
    # resumed: the checkpoint's vocabulary, whose ids are those already packed (the data cache is reused)
    out = pretrain('--resume', 'latest', '--max_steps', '3')
    assert 'from step 2' in out and 'Examples: cached in' in out and 'vocabulary 1,000' in out
