"""Caches built whole or not at all: a build of the pretraining examples or of a vocabulary killed at any moment
never leaves a cache that a later run takes for finished, and the folder it was building in goes at the next build
(never while its process lives). The documents are read as the `datasets` text loader read them, in bounded memory.
"""
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _utils import text
from _utils.errors import UserError
from _utils.text import (MAX_DOCUMENT_CHARS, load_tokenizer, pretraining_examples, read_documents,
                         remove_abandoned_builds, train_tokenizer)

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()

# A build in its own process that reports when it starts building, and can kill itself at a named point
CHILD = r'''
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import _utils.text as text
what, corpus, cache, kill_at = sys.argv[2:6]

def killing(function, point, when=lambda *args: True):
    def wrapped(*args, **kwargs):
        if kill_at == 'before ' + point and when(*args): os.kill(os.getpid(), signal.SIGKILL)
        result = function(*args, **kwargs)
        if kill_at == 'after ' + point and when(*args): os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

text.publish = killing(text.publish, 'publish')
Path.rename = killing(Path.rename, 'rename', lambda path, target: Path(target).parent == Path(cache))  # the cache's
tokenizer = text.load_tokenizer()
print('building', flush=True)
if what == 'examples': text.pretraining_examples(corpus, tokenizer, 128, num_proc=1, cache_root=cache, verbose=False)
else: text.train_tokenizer(corpus, vocab_size=2000, cache_root=cache)
print('done', flush=True)
'''


def start_build(what, corpus, cache, kill_at='never'):
    """The build in a child process, once it has reached the build (imports and tokenizer done)."""
    child = subprocess.Popen([sys.executable, '-c', CHILD, str(ROOT), what, str(corpus), str(cache), kill_at],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, 'OMP_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'})
    assert child.stdout.readline() == 'building\n'
    return child


def leftovers(cache):
    """The build folders in the cache (the examples' and the vocabularies')."""
    return sorted(p.name for folder in (Path(cache), Path(cache) / 'tokenizers') for p in folder.glob('*.tmp*'))


def built_folders(cache):
    return [p for p in Path(cache).iterdir() if p.is_dir() and '.tmp' not in p.name] if Path(cache).exists() else []


def ids(examples):
    return examples[:]['input_ids'], examples[:]['token_type_ids']


@pytest.fixture(scope='module')
def tokenizer():
    return load_tokenizer('bundled')


@pytest.fixture
def small_corpus(tmp_path):
    rng = random.Random(0)
    words = 'the cat sat on a mat while rain fell over quiet hills and rivers ran to the sea'.split()
    documents = ['\n'.join(' '.join(rng.choices(words, k=rng.randint(3, 40))) for _ in range(rng.randint(1, 30)))
                 for _ in range(150)]
    (tmp_path / 'small.txt').write_text('\n\n'.join(documents) + '\n', encoding='utf-8')
    return tmp_path / 'small.txt'


# ---------------------------------------------------------------------------------------------------------------
# Which folders count as built, and which are abandoned
# ---------------------------------------------------------------------------------------------------------------
def test_a_cache_without_its_key_file_is_built_again_not_reused(tokenizer, small_corpus, tmp_path, capsys):
    # what a build killed between the rename and writing cache_key.json left behind before the key came first
    cache = tmp_path / 'cache'
    first = pretraining_examples(str(small_corpus), tokenizer, 64, num_proc=1, cache_root=cache)
    (folder,) = built_folders(cache)
    (folder / 'cache_key.json').unlink()
    capsys.readouterr()
    again = pretraining_examples(str(small_corpus), tokenizer, 64, num_proc=1, cache_root=cache)
    assert 'built from' in capsys.readouterr().out and (folder / 'cache_key.json').exists()
    assert all(torch.equal(a, b) for a, b in zip(ids(first), ids(again)))


def test_build_folders_of_dead_processes_go_those_of_live_ones_and_other_hosts_stay(tmp_path):
    finished = subprocess.Popen(['true'])
    finished.wait()                                 # its id now names no process
    alive = subprocess.Popen(['sleep', '60'])
    try:
        names = {f'a-L128-0123.tmp{finished.pid}@{HOST}': False, f'b.tmp{finished.pid}': False,   # older name
                 f'c.tmp{alive.pid}@{HOST}': True, f'd.tmp{os.getpid()}@{HOST}': True,
                 f'e.tmp{finished.pid}@another-host': True, 'f-L128-0123': True}
        for name in names: (tmp_path / name).mkdir()
        remove_abandoned_builds(tmp_path)
        assert {name: (tmp_path / name).exists() for name in names} == names
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------------------------------------------------------
# The documents, in bounded memory
# ---------------------------------------------------------------------------------------------------------------
def test_documents_are_the_text_between_blank_lines_as_the_datasets_text_loader_reads_them(tmp_path):
    import datasets
    rng = random.Random(0)
    files = []
    for k in range(6):
        lines = [rng.choice(['', '', ' ', 'a b', 'caf\u00e9 ' * rng.randint(1, 60)])
                 for _ in range(rng.randint(1, 900))]
        newline = rng.choice(['\n', '\r\n', '\r'])
        files.append(tmp_path / f'{k}.txt')
        files[-1].write_bytes((newline.join(lines) + rng.choice(['', newline, newline * 3])).encode())
    loader = datasets.load_dataset('text', data_files=[str(f) for f in files], sample_by='paragraph', split='train',
                                   cache_dir=str(tmp_path / 'hf'))['text']
    for chunk_chars in (5, 64, 1 << 16):  # documents cross the chunks read
        assert [row['text'] for row in read_documents([str(f) for f in files], chunk_chars=chunk_chars)] == loader


def test_a_file_without_blank_lines_is_cut_into_parts_of_bounded_size(tmp_path):
    line = 'one sentence per line and no blank line between documents\n'
    (tmp_path / 'one.txt').write_text(line * (3 * MAX_DOCUMENT_CHARS // len(line)))
    parts = [row['text'] for row in read_documents([str(tmp_path / 'one.txt')])]
    assert len(parts) == 3 and ''.join(parts) == (tmp_path / 'one.txt').read_text()
    assert all(len(p) <= MAX_DOCUMENT_CHARS + (1 << 16) + len(line) and p.endswith('\n') for p in parts)


def test_a_corpus_file_that_is_not_utf8_is_one_clear_line(tokenizer, tmp_path):
    (tmp_path / 'latin1.txt').write_bytes('caf\u00e9 au lait\n'.encode('latin-1'))
    with pytest.raises(UserError, match="is not UTF-8 text") as error:
        pretraining_examples(str(tmp_path / 'latin1.txt'), tokenizer, 32, num_proc=1, cache_root=tmp_path / 'cache')
    assert '\n' not in str(error.value) and leftovers(tmp_path / 'cache') == []


def test_the_examples_are_the_same_with_any_number_of_processes(tokenizer, small_corpus, tmp_path):
    one = pretraining_examples(str(small_corpus), tokenizer, 64, num_proc=1, cache_root=tmp_path / '1',
                               verbose=False)
    three = pretraining_examples(str(small_corpus), tokenizer, 64, num_proc=3, cache_root=tmp_path / '3',
                                 verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(ids(one), ids(three)))


# ---------------------------------------------------------------------------------------------------------------
# Builds killed outright (SIGKILL), then run again
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('kill_at, finished', [('before publish', False), ('before rename', False),
                                               ('after rename', True)])
def test_a_build_killed_around_its_rename_leaves_no_cache_or_a_finished_one(kill_at, finished, tokenizer,
                                                                            small_corpus, tmp_path, capsys):
    cache = tmp_path / 'cache'
    child = start_build('examples', small_corpus, cache, kill_at)
    assert child.wait(timeout=300) == -signal.SIGKILL
    assert len(built_folders(cache)) == finished and len(leftovers(cache)) == 1
    reference = pretraining_examples(str(small_corpus), tokenizer, 128, num_proc=1, cache_root=tmp_path / 'clean',
                                     verbose=False)
    capsys.readouterr()
    again = pretraining_examples(str(small_corpus), tokenizer, 128, num_proc=1, cache_root=cache)
    assert ('cached in' if finished else 'built from') in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(ids(reference), ids(again)))
    assert leftovers(cache) == [] and len(built_folders(cache)) == 1


@pytest.mark.slow
def test_examples_killed_mid_build_are_built_again_equal_to_a_clean_build(tokenizer, tmp_path, capsys):
    corpus = text.BUNDLED_CORPUS                     # 3 MB: a few seconds to build on one core
    start = time.perf_counter()
    reference = pretraining_examples(str(corpus), tokenizer, 128, num_proc=1, cache_root=tmp_path / 'clean',
                                     verbose=False)
    seconds, killed = time.perf_counter() - start, 0
    for k, fraction in enumerate((0.05, 0.3, 0.6, 0.9)):
        cache = tmp_path / f'cache{k}'
        child = start_build('examples', corpus, cache)
        time.sleep(fraction * seconds)
        child.send_signal(signal.SIGKILL)
        if child.wait() != -signal.SIGKILL: continue                      # finished first: nothing to test
        killed += 1
        assert built_folders(cache) == [], f'killed at {fraction:.0%} of the build, it left a finished cache'
        capsys.readouterr()
        again = pretraining_examples(str(corpus), tokenizer, 128, num_proc=1, cache_root=cache)
        assert 'built from' in capsys.readouterr().out                      # built again, not reused
        assert all(torch.equal(a, b) for a, b in zip(ids(reference), ids(again)))
        assert leftovers(cache) == [], 'the killed build left its folder behind'
    assert killed >= 3


@pytest.mark.slow
def test_a_vocabulary_killed_mid_training_is_trained_again_equal_to_a_clean_one(tmp_path):
    start = time.perf_counter()
    reference = train_tokenizer('bundled', vocab_size=2000, cache_root=tmp_path / 'clean')
    seconds, killed = time.perf_counter() - start, 0
    for k, fraction in enumerate((0.2, 0.6, 0.9)):
        cache = tmp_path / f'cache{k}'
        child = start_build('tokenizer', 'bundled', cache)
        time.sleep(fraction * seconds)
        child.send_signal(signal.SIGKILL)
        if child.wait() != -signal.SIGKILL: continue                      # finished first: nothing to test
        killed += 1
        assert built_folders(cache / 'tokenizers') == []
        again = train_tokenizer('bundled', vocab_size=2000, cache_root=cache)
        assert again.backend_tokenizer.to_str() == reference.backend_tokenizer.to_str()
        assert leftovers(cache) == []
    assert killed >= 2
