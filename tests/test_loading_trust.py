"""Loading never runs code that a file names. A checkpoint of a pair of your own records 'file.py:function'; every
entry point that reads such a checkpoint (pretrain --resume, finetune, detect, export, import) refuses it in one
line without importing what it names, and `--pair` given again on the command line rebuilds it and trains on.

The pair's file below leaves a marker when it is imported, so "never imported" is something a test can see."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _utils.checkpoint import export_huggingface, import_huggingface, load_checkpoint, models_from_checkpoint
from _utils.detection import load_detector
from _utils.errors import UserError
from _utils.glue_models import load_pretrained
from test_any_pair import PAIR_FILE

ROOT = Path(__file__).resolve().parents[1]

MARKED_PAIR = """
from pathlib import Path
Path(__file__).with_name('IMPORTED').write_text('this module was imported')
""" + PAIR_FILE  # test_any_pair's plain pair, leaving a marker when imported


def run(script, *args, env_path=None):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    if env_path: env['PYTHONPATH'] = str(env_path)  # so that a module name in the file *could* be imported
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def pretrain(tmp_path, *args):
    return run('pretrain.py', '--size', 'tiny', '--compile', 'none', '--batch_size', '4', '--max_length', '32',
               '--precision', 'fp32',
               '--device', 'cpu', '--logger', 'csv', '--log_every', '1', '--warmup_steps', '1', '--lr', '1e-4',
               '--checkpoint_fractions', '1', '--checkpoint_dir', tmp_path / 'ckpt', '--log_dir', tmp_path / 'logs',
               *args, env_path=tmp_path / 'code')


@pytest.fixture(scope='module')
def own_checkpoint(tmp_path_factory):
    """A checkpoint of a 2-step run of a pair of your own ('marked.py:make_pair'), the marker removed afterwards;
    and the same checkpoint with its pair renamed to the module 'marked:make_pair' (what an edited file holds)."""
    root = tmp_path_factory.mktemp('own')
    (root / 'code').mkdir()
    (root / 'code' / 'marked.py').write_text(MARKED_PAIR)
    spec = f"{root / 'code' / 'marked.py'}:make_pair"
    res = pretrain(root, '--pair', spec, '--run_name', 'own', '--max_steps', '2', '--save_every', '1',
                   '--keep_last', '5')
    assert res.returncode == 0, res.stderr[-3000:]
    marker = root / 'code' / 'IMPORTED'
    assert marker.exists()  # training it did import it: the user named it
    marker.unlink()
    ckpt = load_checkpoint(root / 'ckpt' / 'own_seed0_step1.pth')
    renamed = {**ckpt, 'pair': 'marked:make_pair', 'config': {**ckpt['config'], 'pair': 'marked:make_pair'}}
    torch.save(renamed, root / 'renamed.pth')
    return root, spec, marker


def one_line_refusal(res, *phrases):
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-3000:])
    error = res.stderr.strip().splitlines()
    assert len(error) == 1 and 'Traceback' not in res.stderr, res.stderr
    for phrase in phrases: assert phrase in error[0], error[0]


@pytest.mark.slow
@pytest.mark.parametrize('name', ['own_seed0_step1.pth', 'renamed.pth'])
def test_pretrain_resume_refuses_a_pair_nobody_named_and_imports_nothing(own_checkpoint, name):
    root, spec, marker = own_checkpoint
    res = pretrain(root, '--resume', root / 'ckpt' / name if name != 'renamed.pth' else root / name,
                   '--max_steps', '3')
    one_line_refusal(res, 'your own pair', 'loading never runs code that a file names', '--pair')
    assert not marker.exists()


@pytest.mark.slow
def test_finetune_refuses_a_pair_checkpoint_in_one_line_and_imports_nothing(own_checkpoint, tmp_path):
    root, _, marker = own_checkpoint
    for name in ('ckpt/own_seed0_step1.pth', 'renamed.pth'):
        res = run('finetune.py', '--model', root / name, '--tasks', 'rte', '--n_runs', '1', '--epochs', '1',
                  '--glue_dir', ROOT / 'datasets' / 'glue_sample', '--output_dir', tmp_path,
                  env_path=root / 'code')
        one_line_refusal(res, 'your own pair', 'cannot be finetuned by finetune.py')
        assert not marker.exists()


@pytest.mark.slow
def test_detect_refuses_a_pair_checkpoint_in_one_line_and_imports_nothing(own_checkpoint):
    root, _, marker = own_checkpoint
    for name in ('ckpt/own_seed0_step1.pth', 'renamed.pth'):
        res = run('detect.py', '--model', root / name, '--text', 'the cat sat on the mat', env_path=root / 'code')
        one_line_refusal(res, 'your own pair', 'detection, which needs Hugging Face ELECTRA models')
        assert not marker.exists()


def test_the_loaders_refuse_a_pair_checkpoint_and_import_nothing(own_checkpoint, tmp_path, monkeypatch):
    root, spec, marker = own_checkpoint
    monkeypatch.syspath_prepend(str(root / 'code'))  # 'marked' is importable from here, were anything to try
    for path in (root / 'ckpt' / 'own_seed0_step1.pth', root / 'renamed.pth'):
        ckpt = load_checkpoint(path)
        for load, message in ((lambda: export_huggingface(ckpt, tmp_path / 'hf'), 'cannot be exported'),
                              (lambda: load_pretrained(str(path)), 'cannot be finetuned'),
                              (lambda: load_detector(str(path)), 'cannot be used for detection'),
                              (lambda: models_from_checkpoint(ckpt), 'give --pair'),
                              (lambda: import_huggingface(str(path)), 'give a folder holding generator/'),
                              (lambda: import_huggingface(f'{path},{path}'), 'is not a folder')):
            with pytest.raises(UserError, match=message) as e:
                load()
            assert '\n' not in str(e.value)
        assert not marker.exists() and not (tmp_path / 'hf').exists()
        assert 'marked' not in sys.modules
    with pytest.raises(UserError, match='is not the pair the checkpoint was trained with'):
        models_from_checkpoint(ckpt, pair=f"{root / 'code' / 'marked.py'}:other_function")
    assert not marker.exists()


@pytest.mark.slow
def test_named_again_the_pair_is_rebuilt_and_the_run_resumes_and_trains(own_checkpoint, tmp_path):
    root, spec, marker = own_checkpoint
    for name in ('ckpt/own_seed0_step1.pth', 'renamed.pth'):
        res = pretrain(root, '--resume', root / name, '--pair', spec, '--max_steps', '3', '--run_name', 'again',
                       '--checkpoint_dir', tmp_path / name.replace('/', '_'))
        assert res.returncode == 0, res.stderr[-3000:]
        assert 'from step 1' in res.stdout and f'your own pair ({spec})' in res.stdout
        final = load_checkpoint(tmp_path / name.replace('/', '_') / 'again_seed0_100pct.pth')
        start = load_checkpoint(root / 'ckpt' / 'own_seed0_step1.pth')
        assert final['step'] == 3
        assert not torch.equal(final['discriminator']['out.weight'], start['discriminator']['out.weight'])  # trained
        marker.unlink()  # named on the command line, so imported: as it should be
    res = pretrain(root, '--resume', root / 'ckpt' / 'own_seed0_step1.pth', '--pair', 'marked.py:other',
                   '--max_steps', '3')
    one_line_refusal(res, 'is not the pair the checkpoint was trained with')
    assert not marker.exists()
