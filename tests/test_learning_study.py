"""bench/learning.py, the compute-matched study: its budget split, FLOP counts and report (the runs themselves are
pretrain.py and finetune.py, tested elsewhere)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
import learning  # noqa: E402

from _utils.pretraining import build_electra, step_flops  # noqa: E402


def test_profiles_fill_what_the_command_line_leaves_out():
    args = learning.parse_args(['--budget_steps', '50', '--objectives', 'electra, mlm ,electra-15'])
    assert (args.size, args.batch_size, args.seeds, args.epochs) == ('tiny', 32, 3, 3)      # the cpu profile
    assert args.budget_steps == 50 and args.objectives == ['electra', 'mlm', 'electra-15']
    gpu = learning.parse_args(['--profile', 'gpu'])
    assert (gpu.size, gpu.batch_size, gpu.lr, gpu.tasks) == ('small', 128, 5e-4, 'all')


def test_an_unknown_objective_is_one_line(capsys):
    with pytest.raises(SystemExit):
        learning.parse_args(['--objectives', 'electra,bert'])
    assert "unknown objective 'bert'" in capsys.readouterr().err


@pytest.mark.slow
def test_step_flops_grow_with_the_batch_and_rank_the_objectives(tokenizer):
    flops = {o: step_flops(build_electra('tiny', tokenizer, objective=o), 8, 64)
             for o in ('electra', 'electra-15', 'replace-mlm', 'mlm')}
    assert flops['mlm'] < flops['electra'] == flops['electra-15'] < flops['replace-mlm']
    electra = build_electra('tiny', tokenizer)
    assert step_flops(electra, 16, 64) == 2 * step_flops(electra, 8, 64)
    # the forward and backward of the matrix products: about 6 x parameters-in-products x tokens, and more
    assert flops['electra'] > 6 * 8 * 64 * 2 * 128 * 512 * 2


def test_every_objective_gets_the_same_budget_in_its_own_steps():
    args = learning.parse_args(['--budget_steps', '1000', '--batch_size', '4', '--max_length', '32'])
    budget, plan = learning.plan(args)
    assert plan['electra']['steps'] == 1000
    assert plan['mlm']['steps'] > 1000                                  # its step is cheaper
    for p in plan.values():
        assert abs(p['steps'] * p['step_flops'] - budget) <= 5 * p['step_flops']  # steps rounded to tens


def test_report_writes_the_table_and_the_plot(tmp_path):
    args = learning.parse_args(['--results', str(tmp_path / 'RESULTS.md'), '--plot', str(tmp_path / 'plot.png'),
                                '--out_dir', str(tmp_path)])
    (tmp_path / 'cpu').mkdir()
    rows = [('electra', 0.5, 1000, 1e13, {'CoLA': 10.0, 'MRPC': 70.0}),
            ('electra', 1.0, 2000, 2e13, {'CoLA': 12.0, 'MRPC': 72.0}),
            ('mlm', 1.0, 2300, 2e13, {'CoLA': 8.0, 'MRPC': 69.0}),
            ('random init', 0.0, 0, 0.0, {'CoLA': 5.0, 'MRPC': 68.0})]
    learning.report(args, 2e13, rows, minutes=1.0)
    text = (tmp_path / 'RESULTS.md').read_text()
    assert '| objective | steps | pretraining FLOPs | CoLA | MRPC | average |' in text
    assert '| electra | 2,000 | 2e+13 | 12.0 | 72.0 | 42.0 |' in text
    assert '| random init | 0 | 0 | 5.0 | 68.0 | 36.5 |' in text
    assert (tmp_path / 'plot.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
