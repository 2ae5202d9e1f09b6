"""The scripts as a user runs them: --help, overrides, in sync with their notebooks, and a short run (bad input:
test_bad_input.py)."""
import csv
import os
import subprocess
import sys
from pathlib import Path


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
