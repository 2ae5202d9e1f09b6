"""The scripts as a user runs them: --help, overrides, in sync with their notebooks, and a short run (bad input:
test_bad_input.py)."""
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def run(args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make (the Makefile holds the nbconvert command)')
def test_scripts_are_what_nbconvert_makes_of_their_notebooks(tmp_path):
    res = subprocess.run(['make', '--no-print-directory', 'scripts', f'OUT={tmp_path}'], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for script in ('pretrain.py', 'finetune.py', 'detect.py'):
        assert (ROOT / script).read_text() == (tmp_path / script).read_text(), \
            f'{script} is out of sync with its notebook: run `make scripts`'
    assert 'plot_history' not in (tmp_path / 'pretrain.py').read_text()        # notebook-only cells stay out


def test_notebooks_are_stored_as_nbstripout_leaves_them(tmp_path):
    """`make notebooks` keeps outputs and strips the metadata that changes on every run: nbstripout (the version
    installed) leaves the committed notebooks byte for byte as they are."""
    notebooks = sorted(ROOT.glob('*.ipynb'))
    for notebook in notebooks: shutil.copy(notebook, tmp_path)
    res = subprocess.run([sys.executable, '-m', 'nbstripout', '--keep-output', *sorted(tmp_path.glob('*.ipynb'))],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    for notebook in notebooks:
        assert (tmp_path / notebook.name).read_bytes() == notebook.read_bytes(), f'{notebook.name}: `make notebooks`'


@pytest.mark.slow
def test_help_lists_every_field_with_default_and_meaning():
    res = run(['pretrain.py', '--help'])
    assert res.returncode == 0
    for field in ('size', 'corpus', 'max_steps', 'batch_size', 'max_length', 'lr', 'seed', 'run_name', 'precision',
                  'device', 'logger'):
        assert f'--{field} ' in res.stdout
    assert "default 0.0005" in res.stdout            # ELECTRA-Small's lr, RECIPE.md
    assert 'paper-small' in res.stdout


@pytest.mark.slow
def test_the_demo_is_the_cpu_recipe_on_the_bundled_corpus_and_says_where_it_departs_from_the_paper():
    """The CPU recipe (bench/RESULTS.md, "A CPU recipe"): ELECTRA's objective, tiny, rope, a WordPiece vocabulary of
    8,192 trained on the corpus, 64 x 64 tokens, 25% masked, lr 2e-3 after 300 warmup steps, no dropout, 4,000
    steps, the step compiled; the paper's presets stay the paper's."""
    res = run(['pretrain.py', '--help'])
    presets = {line.split()[0]: line.split(None, 1)[1] for line in res.stdout.split('presets (')[1].splitlines()[1:]
               if line.startswith('  ') and len(line.split()) > 1}
    cpu = ('size=tiny, position=rope, tokenizer=train, vocab_size=8192, batch_size=64, max_length=64, mask_prob=0.25, '
           'lr=0.002, warmup_steps=300, dropout=0.0, max_steps=4000, compile=default')
    assert presets['cpu'] == cpu and presets['demo'] == cpu + ', corpus=bundled'
    assert 'objective' not in cpu and presets['paper-small'] == ('size=small, corpus=Skylion007/openwebtext, '
                                                                 'max_steps=1000000, batch_size=128, max_length=128, '
                                                                 'lr=0.0005, warmup_steps=10000')


@pytest.mark.slow
def test_a_short_run_with_overrides_writes_checkpoints_and_logs(tmp_path):
    res = run(['pretrain.py', '--compile', 'none', '--max_steps', '4', '--batch_size', '4', '--log_every', '2',
               '--run_name', 'ci',
               '--checkpoint_dir', str(tmp_path / 'ckpt'), '--log_dir', str(tmp_path / 'logs'),
               '--checkpoint_fractions', '0.5,1', '--logger', 'csv'])
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'max_steps              4   <- the paper: 1000000' in res.stdout
    for departure in ("position               'rope'   <- the paper: 'absolute'", 'mask_prob              0.25   <- the '
                      'paper: 0.15', 'dropout                0.0   <- the paper: 0.1'):
        assert departure in res.stdout
    assert sorted(p.name for p in (tmp_path / 'ckpt').glob('*.pth')) == ['ci_seed0_100pct.pth', 'ci_seed0_50pct.pth']
    rows = list(csv.DictReader((tmp_path / 'logs' / 'ci_seed0' / 'metrics.csv').open()))
    assert [int(r['step']) for r in rows] == [1, 2, 4]
    assert {'mlm_loss', 'disc_loss', 'gen_acc', 'disc_acc', 'disc_precision', 'disc_recall', 'disc_auc',
            'replaced_rate', 'lr', 'tokens_per_s'} <= set(rows[0])
