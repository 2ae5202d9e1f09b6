"""`--precision auto` on CPUs: bf16 where the CPU has AMX or AVX512-BF16, fp32 otherwise.

The machines this suite runs on differ (some have AVX512-BF16, some not), so every case here fakes the CPU's
answer instead of reading it: the outcome is the same on any machine.
"""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _utils.errors import UserError
from _utils.learner import cpu_has_fast_bf16, pick_precision

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device('cpu')


def fake_cpu(monkeypatch, amx=False, avx512_bf16=False):
    # raising=False: torch 2.4 has neither probe (then the fakes add them)
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16, raising=False)


@pytest.mark.parametrize('amx, avx512_bf16, expected', [(False, False, 'fp32'), (False, True, 'bf16'),
                                                        (True, False, 'bf16'), (True, True, 'bf16')])
def test_auto_is_bf16_on_cpus_with_amx_or_avx512_bf16_and_fp32_on_others(monkeypatch, amx, avx512_bf16, expected):
    fake_cpu(monkeypatch, amx, avx512_bf16)
    assert cpu_has_fast_bf16() == (expected == 'bf16')
    assert pick_precision('auto', CPU) == expected


def test_auto_is_fp32_when_torch_cannot_tell(monkeypatch):
    monkeypatch.delattr(torch.cpu, '_is_amx_tile_supported', raising=False)  # a torch without the probe (2.4)
    assert pick_precision('auto', CPU) == 'fp32'


def test_auto_on_a_gpu_is_bf16_from_ampere_on_else_fp16(monkeypatch):
    for supported, expected in ((True, 'bf16'), (False, 'fp16')):
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda: supported)
        assert pick_precision('auto', torch.device('cuda')) == expected


def test_an_explicit_precision_is_kept_whatever_the_cpu(monkeypatch):
    for has in (False, True):
        fake_cpu(monkeypatch, avx512_bf16=has)
        assert pick_precision('fp32', CPU) == 'fp32' and pick_precision('bf16', CPU) == 'bf16'
        with pytest.raises(UserError, match='fp16 needs a CUDA GPU'):
            pick_precision('fp16', CPU)


# pretrain.py as a user runs it, on a CPU that says it has (or has not) AVX512-BF16
FAKE_CPU_RUN = """
import runpy, sys, torch
torch.cpu._is_amx_tile_supported = lambda: False
torch.cpu._is_avx512_bf16_supported = lambda: {has}
sys.argv = ['pretrain.py', *sys.argv[1:]]
runpy.run_path('pretrain.py', run_name='__main__')
"""


@pytest.mark.slow
@pytest.mark.parametrize('has_bf16, expected', [(True, 'bf16'), (False, 'fp32')])
def test_pretrain_py_prints_and_trains_in_the_precision_auto_picks(tmp_path, has_bf16, expected):
    # With the fake "has AVX512-BF16" this also trains in bf16 on CPUs without it (slower there, same result)
    res = subprocess.run([sys.executable, '-c', FAKE_CPU_RUN.format(has=has_bf16), '--size', 'tiny',
                          '--compile', 'none',
                          '--max_steps', '2', '--batch_size', '4', '--max_length', '32', '--log_every', '1',
                          '--device', 'cpu', '--logger', 'csv', '--run_name', 'auto', '--checkpoint_fractions', '1',
                          '--checkpoint_dir', str(tmp_path / 'ck'), '--log_dir', str(tmp_path / 'logs')],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, 'OMP_NUM_THREADS': '1', 'ELECTRA_ARGS': ''})
    assert res.returncode == 0, res.stderr[-3000:]
    assert f'Training 2 steps of 4 x 32 tokens on cpu ({expected})' in res.stdout
    rows = list(csv.DictReader((tmp_path / 'logs' / 'auto_seed0' / 'metrics.csv').open()))
    assert [int(r['step']) for r in rows] == [1, 2] and all(0 < float(r['mlm_loss']) < 20 for r in rows)
    assert (tmp_path / 'ck' / 'auto_seed0_100pct.pth').exists()


# ---------------------------------------------------------------------------------------------------------------
# The compile mode (`pick_compile`): on a CPU without a C++ compiler, eager with one warning
# ---------------------------------------------------------------------------------------------------------------
def test_auto_compiles_on_gpus_only_and_a_mode_asked_for_is_kept():
    from _utils.pretraining import pick_compile
    assert pick_compile('auto', torch.device('cpu')) == 'none'
    assert pick_compile('auto', torch.device('cuda')) == 'reduce-overhead'
    assert pick_compile('auto', torch.device('cuda'), world_size=2) == 'default'
    assert pick_compile('none', torch.device('cpu')) == 'none'


def test_a_cpu_without_a_cpp_compiler_runs_eagerly_saying_so_in_one_warning(monkeypatch):
    import torch._inductor.config as inductor
    from _utils.pretraining import missing_cpp_compiler, pick_compile
    if missing_cpp_compiler(): pytest.skip('this machine has no C++ compiler to take away')
    assert pick_compile('default', torch.device('cpu')) == 'default'
    monkeypatch.setattr(inductor.cpp, 'cxx', (None, '/nonexistent/g++'))          # inductor's own setting
    assert 'No working C++ compiler' in missing_cpp_compiler()
    with pytest.warns(UserWarning, match=r'needs a C\+\+ compiler.*runs eagerly.*--compile none') as caught:
        assert pick_compile('default', torch.device('cpu')) == 'none'
    assert len(caught) == 1
    assert pick_compile('default', torch.device('cuda')) == 'default'                # GPUs compile with Triton


def test_compiling_on_a_cpu_drops_only_the_cuda_home_notice(monkeypatch):
    """Inductor's CPU build logs 'No CUDA runtime is found, using CUDA_HOME=...' on a machine with a CUDA folder and
    no GPU; a CPU run that compiles drops that notice and nothing else of that logger."""
    import logging

    import _utils.pretraining as pretraining
    log = logging.getLogger('torch.utils.cpp_extension')
    monkeypatch.setattr(log, 'filters', [])
    monkeypatch.setattr(pretraining, 'missing_cpp_compiler', lambda: '')
    record = lambda msg: logging.LogRecord(log.name, logging.WARNING, __file__, 1, msg, None, None)
    notice, other = record("No CUDA runtime is found, using CUDA_HOME='/usr/local'"), record('another warning')
    assert pretraining.pick_compile('none', torch.device('cpu')) == 'none' and log.filter(notice)  # not compiling
    assert pretraining.pick_compile('default', torch.device('cpu')) == 'default'
    assert not log.filter(notice) and log.filter(other)
    pretraining.pick_compile('default', torch.device('cpu'))
    assert len(log.filters) == 1                                                      # installed once
