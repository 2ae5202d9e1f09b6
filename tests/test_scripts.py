"""The scripts as a user runs them: --help, overrides, bad input, in sync with their notebooks, and a short run."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_scripts_are_in_sync_with_their_notebooks():
    from _utils.nbscript import PAIRS, script_from_notebook
    for notebook, script in PAIRS.items():
        if (ROOT / notebook).exists():
            assert (ROOT / script).read_text() == script_from_notebook(ROOT / notebook), \
                f'{script} is out of sync with {notebook}: run `python -m _utils.nbscript`'


def test_help_lists_every_field_with_default_and_meaning():
    res = run(['pretrain.py', '--help'])
    assert res.returncode == 0
    for field in ('size', 'corpus', 'max_steps', 'batch_size', 'max_length', 'lr', 'seed', 'run_name', 'precision',
                  'device', 'logger'):
        assert f'--{field} ' in res.stdout
    assert "default 0.0005" in res.stdout            # ELECTRA-Small's lr, RECIPE.md
    assert 'paper-small' in res.stdout


def test_misspelled_field_is_one_line_naming_the_closest_field():
    res = run(['pretrain.py', '--max_step', '20'])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]          # one line, no traceback
    assert 'unknown field --max_step' in res.stderr and 'did you mean --max_steps' in res.stderr


@pytest.mark.parametrize('args, message', [
    (['--max_steps', '0'], '--max_steps must be positive'),
    (['--batch_size', '-4'], '--batch_size must be positive'),
    (['--mask_prob', '1.5'], '--mask_prob must be in (0, 1)'),
    (['--max_length', '1024'], '--max_length must be in [8, 512]'),
    (['--size', 'smal'], "did you mean 'small'"),
    (['--corpus', './no/such/folder'], 'does not exist'),
    (['--checkpoint_dir', '/dev/null/checkpoints'], "cannot write to --checkpoint_dir '/dev/null/checkpoints'"),
    (['--resume', '/no/such/checkpoint.pth'], "checkpoint '/no/such/checkpoint.pth' does not exist"),
    (['--logger', 'csv,wandb'], "unknown logger 'wandb'"),
])
def test_bad_values_are_one_clear_line(args, message):
    res = run(['pretrain.py', *args])
    assert res.returncode == 2
    assert message in res.stderr
    assert 'Traceback' not in res.stderr


def test_a_short_run_with_overrides_writes_checkpoints_and_logs(tmp_path):
    res = run(['pretrain.py', '--max_steps', '4', '--batch_size', '4', '--log_every', '2', '--run_name', 'ci',
               '--checkpoint_dir', str(tmp_path / 'ckpt'), '--log_dir', str(tmp_path / 'logs'),
               '--checkpoint_fractions', '0.5,1', '--logger', 'csv'])
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'max_steps              4' in res.stdout
    assert sorted(p.name for p in (tmp_path / 'ckpt').iterdir()) == ['ci_seed0_100pct.pth', 'ci_seed0_50pct.pth']
    rows = list(csv.DictReader((tmp_path / 'logs' / 'ci_seed0' / 'metrics.csv').open()))
    assert [int(r['step']) for r in rows] == [1, 2, 4]
    assert {'mlm_loss', 'disc_loss', 'gen_acc', 'disc_acc', 'disc_precision', 'disc_recall', 'disc_auc',
            'replaced_rate', 'lr', 'tokens_per_s'} <= set(rows[0])
