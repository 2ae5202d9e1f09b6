"""Data-parallel training with 2 CPU processes (gloo), as torchrun starts them."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _utils.learner import pick_precision

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves these out



def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def launch(cmd, timeout=600):
    """Run a launcher (torchrun, accelerate) and its ranks in a process group of their own. Past `timeout` every
    process of the group gets SIGABRT, which makes each one print where it was (PYTHONFAULTHANDLER), and the test
    fails with those stacks; then the group is killed, so that no rank outlives the test."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONFAULTHANDLER': '1'}  # a crashing rank shows where
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGABRT)
        try: stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired: stdout, stderr = '', ''
        pytest.fail(f'{cmd[2]} did not end within {timeout} s; where each process was:\n{stderr[-8000:]}')
    finally:
        try: os.killpg(proc.pid, signal.SIGKILL)   # ranks left behind by a launcher that ended
        except ProcessLookupError: pass
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def torchrun(out, *args):
    res = launch([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                  '--master_addr', '127.0.0.1', '--master_port', str(free_port()),
                  str(ROOT / 'tests' / 'ddp_worker.py'), str(out), *args])
    assert res.returncode == 0, res.stderr[-3000:]


def test_two_processes_keep_identical_weights_see_different_data_and_only_rank0_writes(tmp_path):
    torchrun(tmp_path)
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['world_size'] == r1['world_size'] == 2 and r0['steps'] == r1['steps'] == 3
    assert r0['weights_sha'] == r1['weights_sha']                      # identical weights after 3 steps
    assert len(r0['seen']) == len(r1['seen']) == 3 * 4                 # half of each global batch of 8
    assert not set(r0['seen']) & set(r1['seen'])                       # 24 of 32 examples, none seen twice
    assert (tmp_path / 'checkpoint_written_by_rank0').exists()
    assert not (tmp_path / 'checkpoint_written_by_rank1').exists()
    assert [p.name for p in (tmp_path / 'ckpt').iterdir()] == ['ddp_seed0_100pct.pth']
    assert (tmp_path / 'logs' / 'metrics.csv').exists()


def test_each_rank_resumes_with_its_own_random_state(tmp_path):
    torchrun(tmp_path)
    ckpt = torch.load(tmp_path / 'ckpt' / 'ddp_seed0_100pct.pth', weights_only=True)
    saved = [state['torch'] for state in ckpt['rng_per_rank']]
    assert len(saved) == 2 and not torch.equal(saved[0], saved[1])   # each rank masks with its own stream
    torchrun(tmp_path, 'resume')
    for rank in (0, 1):
        restored = json.loads((tmp_path / f'resumed_rank{rank}.json').read_text())['torch_rng']
        assert restored == saved[rank].tolist()


def test_a_signal_to_one_rank_stops_both_at_the_same_step_with_one_checkpoint(tmp_path):
    torchrun(tmp_path, 'stop')
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['steps'] == r1['steps'] == 1 and r0['weights_sha'] == r1['weights_sha']
    assert 'at step 1' in r0['stop_reason'] and 'at step 1' in r1['stop_reason']
    assert [p.name for p in (tmp_path / 'ckpt').iterdir()] == ['ddp_seed0_step1.pth']


def test_a_nonfinite_loss_on_one_rank_stops_both_at_the_same_step_before_the_update(tmp_path):
    torchrun(tmp_path, 'nan')
    r0, r1 = (json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1))
    assert r0['steps'] == r1['steps'] == 1 and r0['weights_sha'] == r1['weights_sha']
    for r in (r0, r1): assert 'the gradient norm became nan at step 2; stopped without updating' in r['stop_reason']


def test_the_readme_accelerate_command_runs_pretrain_py_in_two_processes(tmp_path):
    pytest.importorskip('accelerate')
    # An empty data cache, as on a fresh clone: one process builds it while the other waits for the lock, before the
    # process group starts (both building it at once, or one building it while gloo ran, crashed a rank at times)
    res = launch([sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
                  '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
                  '--main_process_port', str(free_port()),
                  'pretrain.py', '--size', 'tiny', '--compile', 'none', '--max_steps', '2',
                  '--batch_size', '4', '--logger', 'csv',
                  '--checkpoint_dir', str(tmp_path / 'ck'), '--log_dir', str(tmp_path / 'logs'),
                  '--data_cache', str(tmp_path / 'cache')])
    assert res.returncode == 0, res.stderr[-3000:]
    # The README's command leaves --precision at auto: bf16 on CPUs with AVX512-BF16 or AMX, else fp32
    # (tests/test_precision.py checks that choice both ways)
    precision = pick_precision('auto', torch.device('cpu'))
    assert f'Training 2 steps of 4 x 64 tokens on cpu ({precision}), 2 processes' in res.stdout  # the demo's length
    assert res.stdout.count('Checkpoints:') == 1                    # rank 0 reports; rank 1 writes nothing
    assert len(re.findall(r'Examples: [\d,]+ built', res.stdout)) == 1          # built once, read by the other
    assert res.stdout.count('Examples: cached in') == 1
    built = sorted(p.name.split('-')[0] for p in (tmp_path / 'cache').iterdir() if p.name != '.build.lock')
    assert built == ['bundled', 'tokenizers']  # one examples folder, and the demo's vocabulary, trained once
    assert sorted(p.name for p in (tmp_path / 'ck').glob('*.pth')) == ['demo_seed0_100pct.pth', 'demo_seed0_50pct.pth']


# ---------------------------------------------------------------------------------------------------------------
# A process killed mid-run
# ---------------------------------------------------------------------------------------------------------------
RESTARTABLE = ['--size', 'tiny', '--compile', 'none', '--batch_size', '4', '--max_length', '32', '--precision', 'fp32',
               '--device', 'cpu', '--logger', 'csv', '--log_every', '1', '--warmup_steps', '2', '--lr', '1e-3',
               '--max_steps', '30', '--save_every', '10', '--keep_last', '1', '--checkpoint_fractions', '1',
               '--run_name', 'ddp']


def torchrun_pretrain(out, kill_rank1_after=None):
    """pretrain.py in 2 processes under `torchrun --standalone --max-restarts 1` (the README's command). With
    `kill_rank1_after`: rank 1 is SIGKILLed once the rolling checkpoint of that step is on disk. -> (stdout, stderr,
    seconds from the kill until torchrun had started the processes again)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONFAULTHANDLER': '1'}
    proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             '--max-restarts', '1', 'pretrain.py', *RESTARTABLE, '--checkpoint_dir', str(out / 'ckpt'),
                             '--log_dir', str(out / 'logs')], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    workers = lambda: [p for p in Path('/proc').iterdir() if p.name.isdigit() and _is_worker_of(p, out)]
    killed_at, restarted_after = None, None
    if kill_rank1_after:
        saved = out / 'ckpt' / f'ddp_seed0_step{kill_rank1_after}.pth'
        deadline = time.time() + 300
        while not saved.exists() and time.time() < deadline and proc.poll() is None: time.sleep(0.1)
        rank1 = [p for p in workers() if b'RANK=1\0' in _environ(p)]
        assert saved.exists() and len(rank1) == 1, 'rank 1 was not found running after the checkpoint'
        os.kill(int(rank1[0].name), signal.SIGKILL)
        killed_at = time.time()
        while time.time() < deadline and proc.poll() is None and not any(
                b'TORCHELASTIC_RESTART_COUNT=1\0' in _environ(p) for p in workers()):
            time.sleep(0.1)
        restarted_after = time.time() - killed_at
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, stderr, restarted_after


def _environ(proc_dir):
    try: return (proc_dir / 'environ').read_bytes()
    except OSError: return b''


def _is_worker_of(proc_dir, out):
    try: return b'pretrain.py' in (cmd := (proc_dir / 'cmdline').read_bytes()) and str(out).encode() in cmd
    except OSError: return False


@pytest.mark.skipif(not Path('/proc').is_dir(), reason='finds the rank to kill in /proc')
def test_a_rank_killed_mid_run_is_restarted_by_torchrun_and_the_run_ends_with_the_uninterrupted_weights(tmp_path):
    torchrun_pretrain(tmp_path / 'whole')
    stdout, stderr, restarted_after = torchrun_pretrain(tmp_path / 'killed', kill_rank1_after=20)
    # the survivor stopped and both were started again within seconds, not after a collective's 30-minute timeout
    assert restarted_after < 60
    saved = tmp_path / 'killed' / 'ckpt' / 'ddp_seed0_step20.pth'
    assert f'Restart 1 by torchrun: the run continues from {saved}' in stdout
    assert 'Training 30 steps of 4 x 32 tokens on cpu (fp32), 2 processes, from step 20' in stdout
    whole, killed = (torch.load(out / 'ckpt' / 'ddp_seed0_100pct.pth', weights_only=True)
                     for out in (tmp_path / 'whole', tmp_path / 'killed'))
    assert killed['step'] == whole['step'] == 30
    for part in ('generator', 'discriminator'):
        assert whole[part].keys() == killed[part].keys()
        assert all(torch.equal(whole[part][k], killed[part][k]) for k in whole[part]), part
