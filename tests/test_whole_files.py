"""Files a run can trust: a checkpoint damaged after it was written is found and skipped, a full disk during a save
harms nothing, and two processes never write the same run."""
import errno
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _utils.callbacks import Checkpointer
from _utils.checkpoint import find_checkpoint, load_checkpoint, newest_checkpoint, restart_point
from _utils.errors import UserError
from _utils.files import atomic_save, claim_run, damage

ROOT = Path(__file__).resolve().parents[1]


def fake_checkpoint(step):
    torch.manual_seed(step)
    return {'format': 'electra-fastai-pretrain/1', 'step': step, 'weights': torch.randn(256, 256)}


def save_steps(folder, *steps):
    """Rolling checkpoints of run 'run' (seed 0), each one second newer than the one before."""
    paths = []
    for i, step in enumerate(steps):
        path = atomic_save(fake_checkpoint(step), folder / f'run_seed0_step{step}.pth')
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        paths.append(path)
    return paths


def flip_a_bit_in_the_weights(path):
    """One bit of the tensor's bytes flipped, as a bad disk or copy would: the zip around it stays readable."""
    with zipfile.ZipFile(path) as z:
        record = max(z.infolist(), key=lambda r: r.file_size)          # the 256 x 256 floats
        start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    data = bytearray(path.read_bytes())
    data[start + record.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    os.utime(path, (2_000_000, 2_000_000))                              # still the newest


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    os.utime(path, (2_000_000, 2_000_000))


# ---------------------------------------------------------------------------------------------------------------
# Damage is found
# ---------------------------------------------------------------------------------------------------------------
def test_a_whole_checkpoint_has_no_damage(tmp_path):
    path, = save_steps(tmp_path, 10)
    assert damage(path) is None
    assert load_checkpoint(path)['step'] == 10


def test_one_flipped_bit_in_the_weights_is_found_though_torch_load_would_take_it(tmp_path):
    path, = save_steps(tmp_path, 10)
    flip_a_bit_in_the_weights(path)
    loaded = torch.load(path, weights_only=True)                       # torch reads it, wrong by one bit
    assert not torch.equal(loaded['weights'], fake_checkpoint(10)['weights'])
    assert 'differs from the checksum written with it' in damage(path)
    with pytest.raises(UserError, match=r"checkpoint '.*step10.pth' is damaged \(record .* differs from the checksum"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_found(tmp_path):
    path, = save_steps(tmp_path, 10)
    cut_in_half(path)
    assert damage(path).startswith('truncated')
    with pytest.raises(UserError, match='is damaged .truncated'):
        load_checkpoint(path)


def test_checksums_are_written_even_where_torch_was_told_not_to(tmp_path, monkeypatch):
    if not hasattr(torch.serialization, 'set_crc32_options'): pytest.skip('this torch always writes them')
    torch.serialization.set_crc32_options(False)
    try:
        path, = save_steps(tmp_path, 10)
    finally:
        torch.serialization.set_crc32_options(True)
    assert all(r.CRC for r in zipfile.ZipFile(path).infolist() if r.file_size)
    flip_a_bit_in_the_weights(path)
    assert 'checksum' in damage(path)


# ---------------------------------------------------------------------------------------------------------------
# --resume latest skips a damaged newest checkpoint
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('harm', [flip_a_bit_in_the_weights, cut_in_half], ids=['bit-flipped', 'truncated'])
def test_latest_falls_back_to_the_newest_whole_checkpoint_saying_so(tmp_path, harm):
    _, older, newest = save_steps(tmp_path, 500, 1000, 1500)
    harm(newest)
    said = []
    assert newest_checkpoint(tmp_path, notify=said.append) == older
    assert len(said) == 1 and 'run_seed0_step1500.pth' in said[0] and 'damaged, skipped' in said[0]
    assert said[0].endswith(f'the newest whole checkpoint is {older}')
    assert find_checkpoint('latest', tmp_path, 'run') == older


def test_latest_of_a_seed_is_that_seeds_newest_even_where_another_seed_saved_later(tmp_path):
    """Seeds of one run name share the folder: `--resume latest --seed 0` must not continue seed 1's run."""
    seed0, = save_steps(tmp_path, 500)
    seed1 = atomic_save(fake_checkpoint(1000), tmp_path / 'run_seed1_step1000.pth')
    os.utime(seed1, (2_000_000, 2_000_000))
    assert find_checkpoint('latest', tmp_path, 'run') == seed1                     # no seed given: the newest
    assert find_checkpoint('latest', tmp_path, 'run', seed=0) == seed0
    assert find_checkpoint('latest', tmp_path, seed=0) == seed0                     # any run name, seed 0
    assert find_checkpoint('latest', tmp_path, 'run', seed=1) == seed1
    with pytest.raises(UserError, match='no checkpoint'):
        find_checkpoint('latest', tmp_path, 'run', seed=2)


def test_latest_says_nothing_when_the_newest_is_whole(tmp_path):
    *_, newest = save_steps(tmp_path, 500, 1000)
    said = []
    assert newest_checkpoint(tmp_path, notify=said.append) == newest and said == []


def test_when_every_checkpoint_is_damaged_latest_is_one_line(tmp_path):
    for path in save_steps(tmp_path, 500, 1000): cut_in_half(path)
    with pytest.raises(UserError, match='every checkpoint in .* is damaged') as error:
        newest_checkpoint(tmp_path)
    assert '\n' not in str(error.value)


# ---------------------------------------------------------------------------------------------------------------
# A full disk during a save
# ---------------------------------------------------------------------------------------------------------------
def disk_fills_after(n_bytes, monkeypatch):
    """torch.save writes `n_bytes`, then the disk is full (ENOSPC), as a real full disk fails a write."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush(); f.truncate(n_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, 'save', save)


def test_a_full_disk_during_a_save_stops_the_run_in_one_line_and_keeps_the_previous_checkpoint(tmp_path,
                                                                                                monkeypatch):
    checkpointer = Checkpointer(tmp_path, 'run', 0, total_steps=100, make_checkpoint=lambda learn: fake_checkpoint(
        learn.step), fractions=(1.0,), save_every=10, keep_last=1)
    checkpointer.learn = SimpleNamespace(step=10)
    checkpointer.save_rolling()
    before = (tmp_path / 'run_seed0_step10.pth').read_bytes()
    disk_fills_after(4096, monkeypatch)
    checkpointer.learn.step = 20
    with pytest.raises(UserError) as error:
        checkpointer.save_rolling()
    message = str(error.value)
    assert '\n' not in message
    assert message.startswith('no space left on the disk to write ') and 'run_seed0_step20.pth' in message
    assert 'free' in message and 'the run stopped at step 20; continue it with --resume latest' in message
    assert [p.name for p in tmp_path.iterdir()] == ['run_seed0_step10.pth']    # nothing half-written, none removed
    assert (tmp_path / 'run_seed0_step10.pth').read_bytes() == before
    assert damage(tmp_path / 'run_seed0_step10.pth') is None


def test_another_write_error_is_one_line_too(tmp_path, monkeypatch):
    def refuse(obj, f, *args, **kwargs): raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(torch, 'save', refuse)
    with pytest.raises(UserError, match=r'cannot write .*a.pth \(Input/output error\); nothing was written'):
        atomic_save({}, tmp_path / 'a.pth')
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# One process per run
# ---------------------------------------------------------------------------------------------------------------
HOLD = 'import sys, time; from _utils.files import claim_run; claim_run(sys.argv[1], "run_seed0", ""); ' \
       'print("held", flush=True); time.sleep(600)'


@pytest.fixture
def holder(tmp_path):
    """Another live process holding run_seed0 in tmp_path."""
    proc = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'held'
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.skipif(sys.platform == 'win32', reason='claims are POSIX file locks')
def test_a_run_claimed_by_a_live_process_is_refused_naming_it(tmp_path, holder):
    with pytest.raises(UserError, match=rf"run 'run_seed0' in .* is being written by pid {holder.pid}, started "
                       r'.*; give another name'):
        claim_run(tmp_path, 'run_seed0', 'give another name')
    assert claim_run(tmp_path, 'run_seed1', '') is not None             # another run in the same folder is free


@pytest.mark.skipif(sys.platform == 'win32', reason='claims are POSIX file locks')
def test_the_claim_ends_with_its_process_even_a_killed_one(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    claim = claim_run(tmp_path, 'run_seed0', '')
    assert claim is not None and f'pid {os.getpid()}' in (tmp_path / '.run_seed0.lock').read_text()
    claim.release()


@pytest.mark.skipif(sys.platform == 'win32', reason='claims are POSIX file locks')
def test_the_same_process_may_claim_again_and_a_released_run_is_free(tmp_path):
    claim = claim_run(tmp_path, 'run_seed0', '')
    assert claim_run(tmp_path, 'run_seed0', '') is claim                 # a notebook cell run twice
    claim.release()
    proc = subprocess.run([sys.executable, '-c', HOLD.replace('time.sleep(600)', 'pass'), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == 'held'


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == 'win32', reason='claims are POSIX file locks')
def test_pretrain_py_refuses_a_second_run_on_a_live_run_in_one_line(tmp_path):
    from tests.test_resume import TINY
    common = [sys.executable, 'pretrain.py', *TINY, '--run_name', 'twice', '--checkpoint_dir', str(tmp_path / 'ckpt'),
              '--log_dir', str(tmp_path / 'logs')]
    first = subprocess.Popen([*common, '--max_steps', '100000'], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        log = tmp_path / 'logs' / 'twice_seed0' / 'metrics.csv'
        deadline = time.time() + 300
        while time.time() < deadline and not log.exists(): time.sleep(0.5)
        second = subprocess.run([*common, '--max_steps', '4'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        first.kill()
        first.wait()
    assert second.returncode != 0
    assert second.stderr.strip().count('\n') == 0
    assert f"run 'twice_seed0' in {tmp_path / 'ckpt'} is being written by pid {first.pid}" in second.stderr
    assert 'give this run another --run_name or --seed' in second.stderr


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == 'win32', reason='claims are POSIX file locks')
def test_finetune_py_refuses_a_second_process_on_a_live_set_in_one_line(tmp_path):
    logs = tmp_path / 'logs'
    holder = subprocess.Popen([sys.executable, '-c', HOLD.replace('"run_seed0"', '"g"'), str(logs)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)   # stands for a finetune.py of the set 'g' at work
    try:
        assert holder.stdout.readline().strip() == 'held'
        res = subprocess.run([sys.executable, 'finetune.py', '--model', 'random', '--size', 'tiny', '--tasks', 'rte',
                              '--group_name', 'g', '--log_dir', str(logs), '--checkpoint_dir', str(tmp_path / 'ck'),
                              '--output_dir', str(tmp_path / 'out')], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    finally:
        holder.kill()
        holder.wait()
    assert res.returncode == 2 and 'Traceback' not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith('error: ')]
    assert errors == [f"error: set 'g' in {logs} is being written by pid {holder.pid}, started "
                      f"{errors[0].split('started ')[1][:16]}; wait for it to end (or stop it), or give this set "
                      'another --group_name']
    assert not (logs / 'g' / 'runs.csv').exists()                       # refused before it wrote anything


# ---------------------------------------------------------------------------------------------------------------
# A process torchrun restarted continues from the run's checkpoint
# ---------------------------------------------------------------------------------------------------------------
def test_restart_point_is_the_runs_newest_whole_checkpoint_only_after_a_restart(tmp_path, monkeypatch):
    _, older, newest = save_steps(tmp_path, 500, 1000, 1500)
    atomic_save(fake_checkpoint(9), tmp_path / 'other_seed0_step9999.pth')   # another run's, newer
    monkeypatch.delenv('TORCHELASTIC_RESTART_COUNT', raising=False)
    assert restart_point(tmp_path, 'run', 0) == ''                           # a first start
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    assert restart_point(tmp_path, 'run', 0) == str(newest)
    cut_in_half(newest)
    assert restart_point(tmp_path, 'run', 0) == str(older)
    assert restart_point(tmp_path, 'run', 1) == ''                           # seed 1 saved nothing yet: from scratch
