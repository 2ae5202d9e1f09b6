"""Bad input, as a user gives it to the scripts: one line saying what is wrong and what to do, exit status 2, no
traceback, and nothing already written is touched (the outputs of real tiny runs, compared byte for byte)."""
import concurrent.futures
import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / 'tests' / 'fixtures' / 'text'  # small corpus and vocab files (see its README)
ENV = dict(os.environ, OMP_NUM_THREADS='1', ELECTRA_ARGS='')
PRETRAIN = ['pretrain.py', '--size', 'tiny', '--compile', 'none', '--max_steps', '2', '--batch_size', '4',
            '--max_length', '32',
            '--warmup_steps', '1', '--precision', 'fp32', '--device', 'cpu', '--logger', 'csv', '--run_name', 'ci',
            '--checkpoint_fractions', '1', '--checkpoint_dir', '{root}/ckpt', '--log_dir', '{root}/logs']
FINETUNE = ['finetune.py', '--model', '{model}', '--tasks', 'rte', '--n_runs', '1', '--epochs', '1',
            '--max_length', '32', '--precision', 'fp32', '--device', 'cpu', '--logger', 'csv', '--group_name', 'ci',
            '--log_dir', '{root}/ft_logs', '--checkpoint_dir', '{root}/ft_ckpt', '--output_dir', '{root}/ft_out']
OFFLINE = {'HF_HUB_OFFLINE': '1'}  # and an empty HF_HOME (see `run`): nothing cached to fall back on


def run(args, paths, env=None, home=None):
    args = [a.format(**vars(paths)) for a in args]
    extra = dict(env or {}, **({'HF_HOME': str(home)} if home else {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**ENV, **extra})


@pytest.fixture(scope='module')
def prior(tmp_path_factory):
    """What earlier runs left, which no bad command may touch: a pretraining checkpoint and its metrics, and a
    finetuning runs.csv, settings.json, best model and test submission. Plus the bad files the commands are given."""
    from transformers import ElectraConfig, ElectraModel
    from _utils.text import load_tokenizer
    root = tmp_path_factory.mktemp('prior')
    paths = types.SimpleNamespace(root=root, model=root / 'tiny-electra', bad=root / 'bad', text=TEXT,
                                  ckpt=root / 'ckpt' / 'ci_seed0_100pct.pth')
    tokenizer = load_tokenizer('bundled')
    torch.manual_seed(0)  # a tiny discriminator body with 64 positions, saved the Hugging Face way
    ElectraModel(ElectraConfig(vocab_size=len(tokenizer), embedding_size=8, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
                 ).save_pretrained(paths.model)
    tokenizer.save_pretrained(paths.model)
    for args in (PRETRAIN, FINETUNE):
        res = run(args, paths)
        assert res.returncode == 0, res.stderr[-3000:]
    assert paths.ckpt.is_file() and (root / 'ft_logs' / 'ci' / 'runs.csv').is_file()
    assert (root / 'ft_ckpt' / 'ci' / 'RTE.pth').is_file() and (root / 'ft_out' / 'ci' / 'RTE.tsv').is_file()

    bad = paths.bad
    bad.mkdir()
    (bad / 'truncated.pth').write_bytes(paths.ckpt.read_bytes()[:5000])  # a copy cut short
    torch.save({'weight': torch.randn(4, 4)}, bad / 'random_tensors.pth')  # a torch file of someone else's
    (bad / 'notes.txt').write_text('not a checkpoint\n')
    (bad / 'empty.txt').write_text('')
    (bad / 'empty_folder').mkdir()
    (bad / 'glue_missing' / 'RTE').mkdir(parents=True)  # the task's folder without its files
    (bad / 'glue_columns' / 'RTE').mkdir(parents=True)
    (bad / 'glue_columns' / 'RTE' / 'train.tsv').write_text('id\tpremise\thypothesis\tgold\n0\tA cat.\tA pet.\t1\n')
    return paths


def snapshot(folder):
    """Every file under `folder`: its bytes (hashed) and modification time; not the claims runs hold on their names
    while they live (`files.claim_run`: '.<run>.lock', left empty of meaning when the run ends)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob('*')) if p.is_file() and not (p.name.startswith('.') and p.suffix == '.lock')}


def assert_one_clear_line(res, *fragments):
    assert res.returncode == 2, res.stdout[-1500:] + res.stderr[-1500:]
    assert 'Traceback' not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, res.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


CASES = {
    # pretraining: the corpus
    'corpus missing': (PRETRAIN, ['--corpus', './no/such/folder'],
                       ["corpus path './no/such/folder' does not exist", 'give a text file, a folder of .txt files']),
    'corpus empty file': (PRETRAIN, ['--corpus', '{bad}/empty.txt'], ['is empty', 'give files with text in them']),
    'corpus empty folder': (PRETRAIN, ['--corpus', '{bad}/empty_folder'], ['holds no .txt files', 'put text files']),
    'corpus without text': (PRETRAIN, ['--corpus', '{text}/no_text.txt'],
                            ['holds no usable text', 'one sentence or paragraph per line']),
    # pretraining: the tokenizer, the fields and their values
    'tokenizer not the checkpoint\'s': (PRETRAIN, ['--resume', '{ckpt}', '--tokenizer', '{text}/tiny_vocab.txt',
                                                   '--corpus', '{text}/tiny_corpus.txt'],
                                        ["the tokenizer (14 tokens) does not match the checkpoint's (8,192 tokens)",
                                         'use the tokenizer the run was trained with']),
    'misspelled field': (PRETRAIN, ['--max_step', '20'], ['unknown field --max_step; did you mean --max_steps?']),
    'steps 0': (PRETRAIN, ['--max_steps', '0'], ['--max_steps must be positive, got 0']),
    'batch -4': (PRETRAIN, ['--batch_size', '-4'], ['--batch_size must be positive, got -4']),
    'mask prob 1.5': (PRETRAIN, ['--mask_prob', '1.5'], ['--mask_prob must be in (0, 1), got 1.5']),
    'length above positions': (PRETRAIN, ['--max_length', '1024'], ['--max_length must be in [8, 512] (the model '
                                                                    'has 512 positions), got 1024']),
    'unknown size': (PRETRAIN, ['--size', 'smal'], ["--size 'smal' is not one of", "did you mean 'small'"]),
    'unknown logger': (PRETRAIN, ['--logger', 'csv,wandb'], ["unknown logger 'wandb'"]),
    'a weight the objective ignores': (PRETRAIN, ['--objective', 'mlm', '--discriminator_weight', '10'],
                                       ["--discriminator_weight weighs the discriminator's loss, which --objective mlm "
                                        'does not have', 'leave it out']),
    # pretraining: checkpoints to resume from
    'checkpoint missing': (PRETRAIN, ['--resume', '/no/such/checkpoint.pth'],
                           ["checkpoint '/no/such/checkpoint.pth' does not exist"]),
    'checkpoint truncated': (PRETRAIN, ['--resume', '{bad}/truncated.pth'],
                             ["truncated.pth' is damaged (truncated or broken", 'use another checkpoint']),
    'checkpoint a text file': (PRETRAIN, ['--resume', '{bad}/notes.txt'], ['cannot be read (truncated or not a torch']),
    # pretraining: outputs and the hub
    'checkpoint dir unwritable': (PRETRAIN, ['--checkpoint_dir', '/dev/null/checkpoints'],
                                  ["cannot write to --checkpoint_dir '/dev/null/checkpoints'", 'choose a folder']),
    'hub corpus offline': (PRETRAIN, ['--corpus', 'someuser/somedataset'],
                           ["cannot load corpus 'someuser/somedataset' from the Hugging Face hub",
                            'with no network use --corpus bundled or a local folder'], OFFLINE),
    'hub tokenizer offline': (PRETRAIN, ['--tokenizer', 'someuser/sometok'],
                              ["cannot load tokenizer 'someuser/sometok'", "couldn't connect",
                               'with no network use --tokenizer bundled or a local folder'], OFFLINE),
    # finetuning: fields and their values
    'finetune runs 0': (FINETUNE, ['--n_runs', '0'], ['--n_runs must be positive, got 0']),
    'finetune lr beside a search': (FINETUNE, ['--preset', 'tupe', '--lr', '1e-4'],
                                    ["--lr 0.0001 would be ignored: --lrs '2e-5,3e-5,4e-5,5e-5'",
                                     'give --lrs 0.0001 for that one rate, or leave out --lr']),
    'finetune length above the model\'s positions': (FINETUNE, ['--max_length', '128'],
                                                     ["--max_length 128 is above the model's 64 positions",
                                                      'give --max_length 64 or less']),
    'unknown task': (FINETUNE, ['--tasks', 'cola,sts-bb'], ["unknown GLUE task 'sts-bb'; did you mean 'stsb'? known "
                                                           'tasks: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE']),
    # finetuning: GLUE folders
    'glue task files missing': (FINETUNE, ['--glue_dir', '{bad}/glue_missing'],
                                ['RTE skipped (no RTE files in', 'expected RTE/train.tsv, RTE/dev.tsv, RTE/test.tsv',
                                 "give a --glue_dir holding these tasks' files"]),
    'glue wrong columns': (FINETUNE, ['--glue_dir', '{bad}/glue_columns'],
                           ["RTE/train.tsv: no column 'sentence1', 'sentence2', 'label' (columns: id premise "
                            'hypothesis gold)', "give a --glue_dir holding these tasks' files"]),
    # finetuning: the pretrained model
    'model truncated': (FINETUNE, ['--model', '{bad}/truncated.pth'], ["truncated.pth' is damaged (truncated or "
                                                                       'broken']),
    'model of random tensors': (FINETUNE, ['--model', '{bad}/random_tensors.pth'],
                                ['is not a checkpoint of this project']),
    # finetuning: outputs, the hub, resuming
    'output dir unwritable': (FINETUNE, ['--output_dir', '/dev/null/out'],
                              ["cannot write to --output_dir '/dev/null/out/ci'", 'choose a folder']),
    'hub model offline': (FINETUNE, ['--model', 'someuser/somemodel'],
                          ["cannot load 'someuser/somemodel' from the Hugging Face hub", "couldn't connect",
                           'with no network give --model latest', 'or --model random'], OFFLINE),
    'hub glue offline': (FINETUNE, ['--glue_dir', 'hub'],
                         ['cannot load nyu-mll/glue (rte) from the Hugging Face hub',
                          'with no network give --glue_dir bundled or a folder'], OFFLINE),
    'resume with other settings': (FINETUNE, ['--resume', '--lr', '1e-3'],
                                   ['--resume: the runs in', 'were made with other settings (lr 0.0003 -> 0.001)',
                                    'drop --resume', 'or give a new --group_name']),
}


@pytest.fixture(scope='module')
def bad_runs(prior, tmp_path_factory):
    """Every command of CASES, a pretraining and a finetuning one at a time (each is mostly Python imports, on one
    core; two commands of one script would be the same run, and the second refused as such), between two snapshots
    of what the earlier runs wrote: ({case: finished process}, snapshot before, snapshot after)."""
    home = tmp_path_factory.mktemp('hf_home')

    def bad_runs_of(script):
        return {case: run(script + args, prior, *env, home=home)
                for case, (of, args, _, *env) in CASES.items() if of is script}
    before = snapshot(prior.root)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        finished = {case: res for runs in pool.map(bad_runs_of, (PRETRAIN, FINETUNE)) for case, res in runs.items()}
    assert finished.keys() == CASES.keys()
    return finished, before, snapshot(prior.root)


@pytest.mark.slow
@pytest.mark.parametrize('case', CASES)
def test_bad_input_is_one_clear_line_with_exit_status_2_and_no_traceback(case, bad_runs):
    assert_one_clear_line(bad_runs[0][case], *CASES[case][2])


@pytest.mark.slow
def test_no_bad_input_touches_what_earlier_runs_wrote(bad_runs):
    _, before, after = bad_runs
    assert after == before  # every file: same bytes, same modification time, none added or removed


def test_an_output_folder_without_write_permission_is_one_clear_line(prior, tmp_path):
    locked = tmp_path / 'locked'
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK): pytest.skip('running as root: a read-only folder is still writable')
        before = snapshot(prior.root)
        for script, flag in ((PRETRAIN, '--log_dir'), (FINETUNE, '--checkpoint_dir')):
            res = run(script + [flag, str(locked / 'out')], prior)
            assert_one_clear_line(res, f"cannot write to {flag} '{locked / 'out'}", 'Permission denied')
        assert snapshot(prior.root) == before
    finally:
        locked.chmod(0o755)


def test_a_process_that_lost_another_of_its_run_says_so_in_one_line():
    # what gloo raises in the survivors when a process of the run dies (its connection to it reset)
    code = ('from _utils.config import Config; import dataclasses\n'
            '@dataclasses.dataclass\nclass C(Config): pass\nC.from_cli([])\n'
            'raise RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:6840: Connection reset by '
            'peer. This is typically caused by a remote worker hanging")')
    res = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, 'WORLD_SIZE': '2', 'RANK': '1'})
    assert res.returncode == 3 and 'Traceback' not in res.stderr
    assert res.stderr.strip() == ('error: rank 1: another process of this run has stopped (connection reset by peer), '
                                  'so this one stops too; continue the run from its newest checkpoint with --resume '
                                  'latest (under torchrun --max-restarts N it does so by itself)')
    alone = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k not in ('WORLD_SIZE', 'RANK')})
    assert alone.returncode == 1 and 'Traceback' in alone.stderr    # one process: a real error, shown in full
