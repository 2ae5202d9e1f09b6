"""Resuming is exact, an interrupted run leaves a checkpoint it resumes from, and a failed save harms nothing."""
import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--size', 'tiny', '--compile', 'none', '--batch_size', '4', '--max_length', '32', '--precision', 'fp32',
        '--device', 'cpu',
        '--logger', 'csv', '--log_every', '1', '--warmup_steps', '2', '--lr', '1e-3']


def pretrain(tmp_path, *args, name='run'):
    res = subprocess.run([sys.executable, 'pretrain.py', *TINY, '--run_name', name,
                          '--checkpoint_dir', str(tmp_path / 'ckpt'), '--log_dir', str(tmp_path / 'logs'), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def losses(tmp_path, name):
    rows = csv.DictReader((tmp_path / 'logs' / f'{name}_seed0' / 'metrics.csv').open())
    return {int(r['step']): (float(r['mlm_loss']), float(r['disc_loss'])) for r in rows}


def weights(path):
    ckpt = torch.load(path, weights_only=True)
    return {**{'g.' + k: v for k, v in ckpt['generator'].items()}, **{'d.' + k: v for k, v in ckpt['discriminator'].items()}}


@pytest.mark.slow
def test_a_run_stopped_at_half_and_resumed_logs_the_same_losses_and_ends_with_equal_weights(tmp_path):
    full, half = tmp_path / 'full', tmp_path / 'half'
    pretrain(full, '--max_steps', '8', '--save_every', '4', '--checkpoint_fractions', '1', name='full')
    # the same run, stopped after step 4 (its rolling checkpoint), then resumed into another folder
    (half / 'ckpt').mkdir(parents=True)
    (full / 'ckpt' / 'full_seed0_step4.pth').rename(half / 'ckpt' / 'full_seed0_step4.pth')
    out = pretrain(half, '--resume', 'latest', name='full')
    assert 'from step 4' in out.stdout
    a, b = losses(full, 'full'), losses(half, 'full')
    assert sorted(b) == [5, 6, 7, 8]
    for step in b:
        assert abs(a[step][0] - b[step][0]) <= 1e-6 and abs(a[step][1] - b[step][1]) <= 1e-6, step
    wa, wb = weights(full / 'ckpt' / 'full_seed0_100pct.pth'), weights(half / 'ckpt' / 'full_seed0_100pct.pth')
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
    proc = subprocess.Popen([sys.executable, 'pretrain.py', *TINY, '--run_name', 'term', '--max_steps', '100000',
                             '--checkpoint_dir', str(tmp_path / 'ckpt'), '--log_dir', str(tmp_path / 'logs')],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / 'logs' / 'term_seed0' / 'metrics.csv'
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert 'SIGTERM at step' in err and 'Resume with: python pretrain.py --resume' in err
    saved = sorted((tmp_path / 'ckpt').glob('term_seed0_step*.pth'))
    assert len(saved) == 1
    step = int(saved[0].stem.rsplit('step', 1)[1])
    res = pretrain(tmp_path, '--resume', str(saved[0]), '--max_steps', str(step + 2), name='term')
    assert f'from step {step}' in res.stdout
    assert max(losses(tmp_path, 'term')) == step + 2


@pytest.mark.slow
def test_a_nonfinite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    pretrain(tmp_path, '--max_steps', '2', '--checkpoint_fractions', '1', name='good')
    good = tmp_path / 'ckpt' / 'good_seed0_100pct.pth'
    before = good.read_bytes()
    res = subprocess.run([sys.executable, 'pretrain.py', *TINY, '--run_name', 'good', '--max_steps', '4',
                          '--discriminator_weight', 'nan', '--checkpoint_fractions', '1',
                          '--checkpoint_dir', str(tmp_path / 'ckpt'), '--log_dir', str(tmp_path / 'logs2')],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    assert 'the loss became nan at step 1' in res.stderr and 'Traceback' not in res.stderr
    assert good.read_bytes() == before                       # the last good checkpoint is untouched


@pytest.mark.slow
def test_skip_nonfinite_skips_such_steps_and_finishes(tmp_path):
    res = pretrain(tmp_path, '--max_steps', '3', '--discriminator_weight', 'nan', '--skip_nonfinite',
                   '--checkpoint_fractions', '1', name='skip')
    assert 'non-finite loss at step 1: step skipped' in res.stderr
    assert (tmp_path / 'ckpt' / 'skip_seed0_100pct.pth').exists()
