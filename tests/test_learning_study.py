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


def test_the_hour_profile_sets_the_five_objectives_side_by_side_with_two_seeds_for_electra_and_mlm():
    args = learning.parse_args(['--profile', 'cpu-hour'])
    assert args.objectives == ['electra', 'electra-15', 'replace-mlm', 'all-tokens-mlm', 'mlm']
    assert {o: learning.pretraining_seeds(args, o) for o in args.objectives} == {
        'electra': [0, 1], 'electra-15': [0], 'replace-mlm': [0], 'all-tokens-mlm': [0], 'mlm': [0, 1]}
    assert (args.position, args.tokenizer, args.vocab_size, args.fractions, args.tasks, args.seeds) == (
        'rope', 'train', 8192, '0.25,0.5,1', 'cola,mrpc,stsb,rte', 3)
    assert learning.parse_args([]).pretrain_seeds == 1 and learning.parse_args([]).objectives == ['electra', 'mlm']


def test_seeded_gives_each_objective_its_own_number_of_pretraining_runs():
    args = learning.parse_args(['--profile', 'cpu-hour', '--seeded', 'electra:3,mlm', '--seed', '5'])
    assert {o: learning.pretraining_seeds(args, o) for o in args.objectives} == {
        'electra': [5, 6, 7], 'electra-15': [5], 'replace-mlm': [5], 'all-tokens-mlm': [5], 'mlm': [5, 6]}


@pytest.mark.parametrize('seeded, message', [('electra:0', 'a number of runs, 1 or more'),
                                             ('electra:x', 'a number of runs'),
                                             ('elektra:2', "unknown objective 'elektra'")])
def test_a_bad_seeded_entry_is_one_line_naming_it(seeded, message, capsys):
    with pytest.raises(SystemExit):
        learning.parse_args(['--seeded', seeded])
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


def test_a_rows_score_is_the_mean_of_task_medians_with_a_bootstrap_interval():
    runs = [{'CoLA': [10.0, 20.0, 30.0], 'RTE': [50.0, 52.0, 60.0]}]
    assert learning.row_score(runs) == (20.0 + 52.0) / 2
    assert learning.row_score(runs + [{'CoLA': [0.0, 0.0, 40.0], 'RTE': [52.0, 52.0, 52.0]}]) == (15.0 + 52.0) / 2
    low, high = learning.interval(learning.bootstrap(runs, n=500))
    assert low < 36.0 < high and 30.0 <= low and high <= 45.0   # within the runs' own range
    same = [{'CoLA': [10.0, 10.0, 10.0], 'RTE': [50.0, 50.0, 50.0]}]
    assert learning.interval(learning.bootstrap(same, n=50)) == (30.0, 30.0)


def test_report_writes_the_table_differences_and_plot(tmp_path):
    args = learning.parse_args(['--results', str(tmp_path / 'RESULTS.md'), '--plot', str(tmp_path / 'plot.png'),
                                '--out_dir', str(tmp_path)])
    (tmp_path / 'cpu').mkdir()
    row = lambda o, seed, f, cola, mrpc: dict(objective=o, seed=seed, fraction=f, steps=int(2000 * f), flops=2e13 * f,
                                             scores={'CoLA': cola, 'MRPC': mrpc})
    rows = [row('electra', 0, 0.5, [9.0, 10.0, 11.0], [69.0, 70.0, 71.0]),
            row('electra', 0, 1.0, [11.0, 12.0, 13.0], [71.0, 72.0, 73.0]),
            row('random init', 0, 0.0, [4.0, 5.0, 6.0], [67.0, 68.0, 69.0]),
            row('electra', 1, 1.0, [11.5, 12.0, 12.5], [72.0, 72.0, 72.0]),
            row('mlm', 0, 1.0, [11.0, 12.0, 13.0], [70.0, 72.0, 74.0])]
    table, diffs = learning.report(args, 2e13, rows, minutes=1.0)
    text = (tmp_path / 'RESULTS.md').read_text()
    assert '| objective | pretraining runs | steps | pretraining FLOPs | CoLA | MRPC | GLUE average | 95% interval |' \
        in text
    assert '| electra | 0, 1 | 2,000 | 2e+13 | 12.0 | 72.0 | 42.0 |' in text   # both seeds' runs, one median
    assert '| random init | - | 0 | 0 | 5.0 | 68.0 | 36.5 |' in text
    labels = {label: (d, lo, hi) for label, d, (lo, hi) in diffs}
    assert labels['electra - mlm at 100%'][0] == 0.0 and labels['electra (100%) - random init'][0] == 5.5
    lo, hi = labels['electra (100%) - random init'][1:]
    assert 0 < lo <= 5.5 <= hi                                                  # beyond the interval: yes
    assert '| electra (100%) - random init | +5.5 |' in text and text.count('| yes |') == 1
    assert (tmp_path / 'plot.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_random_init_row_is_the_pretrained_rows_model_untrained(tokenizer, tmp_path):
    """Same shape, positions and vocabulary as the checkpoint it is made from, fresh weights, step 0: what finetune.py
    loads like any checkpoint."""
    import torch

    from _utils.checkpoint import load_checkpoint, make_checkpoint
    from _utils.glue_models import load_pretrained
    torch.manual_seed(3)
    electra = build_electra('tiny', tokenizer, max_length=32, position='rope')
    trained = tmp_path / 'run.pth'
    torch.save(make_checkpoint(electra, tokenizer, {'max_length': 32}, 10, 10), trained)
    (tmp_path / 'checkpoints').mkdir()
    path = learning.random_checkpoint(trained, tmp_path)
    random, original = load_checkpoint(path), load_checkpoint(trained)
    assert random['step'] == 0 and random['tokenizer'] == original['tokenizer']
    assert random['discriminator_config'] == original['discriminator_config']
    assert random['discriminator'].keys() == original['discriminator'].keys()
    assert not torch.equal(random['discriminator']['electra.encoder.layer.0.output.dense.weight'],
                           original['discriminator']['electra.encoder.layer.0.output.dense.weight'])
    assert load_pretrained(str(path)).electra.config.position == 'rope'
    assert learning.random_checkpoint(trained, tmp_path) == path  # made once, then reused


def test_a_stopped_run_resumes_from_its_own_seeds_newest_checkpoint(tmp_path, monkeypatch):
    """The study runs seeds one after another under one run name; a stopped seed 0 must resume from seed 0's
    checkpoint even where seed 1's is newer (pretrain.py's 'latest' would take the newest of any seed)."""
    import os

    import torch
    ckpts = tmp_path / 'checkpoints'
    ckpts.mkdir()
    for i, stem in enumerate(['electra-tiny_seed0_step500', 'electra-tiny_seed1_step1000']):
        torch.save({'step': 1}, ckpts / f'{stem}.pth')
        os.utime(ckpts / f'{stem}.pth', (1_000_000 + i, 1_000_000 + i))  # seed 1's is the newer
    commands = []
    monkeypatch.setattr(learning, 'run', lambda cmd, log: commands.append([str(c) for c in cmd]))
    args = learning.parse_args(['--profile', 'cpu-hour', '--corpus', 'bundled', '--glue_dir', 'bundled'])
    for seed, expected in [(0, 'electra-tiny_seed0_step500.pth'), (1, 'electra-tiny_seed1_step1000.pth')]:
        learning.pretrain(args, 'electra', 100, tmp_path, seed)
        cmd = commands[-1]
        assert cmd[cmd.index('--seed') + 1] == str(seed)
        assert Path(cmd[cmd.index('--resume') + 1]).name == expected
    learning.pretrain(args, 'electra', 100, tmp_path, 2)                             # nothing of seed 2 yet
    assert '--resume' not in commands[-1]
