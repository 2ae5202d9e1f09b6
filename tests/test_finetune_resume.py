"""finetune.py --resume after a kill at any moment ends as an uninterrupted set: the same summary, best models and
test files (byte for byte on a CPU, where a run is deterministic)."""
import os
import random
import signal
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from _utils import files, finetuning as ft, glue, glue_models as models, glue_runs as runs, glue_scores
from transformers import ElectraConfig, ElectraModel

PROJECT = Path(__file__).resolve().parents[1]
HUB_FIXTURE = PROJECT / 'tests' / 'fixtures' / 'glue_hf'
SETTINGS = dict(model='random initialisation (tiny, seed 0)', data='bundled', dev_fraction=0.1, lr=3e-4, epochs=2)


# ---------------------------------------------------------------------------------------------------------------
# runs.csv gives back the numbers it was given, and a resumed set summarizes as the uninterrupted one
# ---------------------------------------------------------------------------------------------------------------
# The user's case: RTE (30 dev rows) and MRPC (150) x 2 seeds. Their GLUE average is 59.3333...; from the scores
# rounded to 6 digits, as runs.csv used to keep them, it read 59.3334 after a --resume.
SCORES = {('RTE', 0): 100 * 8 / 30, ('RTE', 1): 100 * 19 / 30, ('MRPC', 0): 100 * 106 / 150,
          ('MRPC', 1): 100 * 115 / 150}


def history(task, seed):
    """Two epochs; every number one that 6 significant digits would round."""
    score, metric = SCORES[(task, seed)], glue.task_by_name(task).main_metric
    rows = [dict(epoch=e, step=7 * e, train_loss=2 / 3 + seed / 7 + e, **{metric: score + 3 * (e - 2)},
                 score=score + 3 * (e - 2), seconds=0.1 + 1 / 3 * e) for e in (1, 2)]
    if task == 'MRPC':
        for row in rows: row['f1'] = row['score'] * 8 / 7
    return rows


def fake_finetune_run(trained):
    """Stands in for `finetune_run`: the run's `history` (each epoch to `on_epoch`), its seed as its weights."""
    def finetune_run(data, pretrained, recipe, seed, run=0, precision='fp32', device=None, log_dir=None, loggers=(),
                     log_every=50, on_epoch=None, config=None):
        trained.append((data.task.name, seed))
        for row in history(data.task.name, seed): on_epoch(dict(row))
        return ft.RunResult(data.task.name, run, seed, history(data.task.name, seed), {'w': torch.tensor([seed])})
    return finetune_run


def finetune_set(log_dir, saved, tasks=('MRPC', 'RTE'), resume=False):
    """finetune_task over `tasks` x seeds 0, 1 (epochs to log_dir/runs.csv), as `finetune_plans` calls it; `saved`
    {task: RunResult with weights} stands in for the best-model files."""
    log = runs.RunsLog(log_dir / 'runs.csv', append=resume, settings=SETTINGS)
    finished = runs.finished_runs(log_dir, SETTINGS, ft.Recipe(epochs=2), notify=lambda line: None) if resume else {}
    return [run for name in tasks
            for run in runs.finetune_task(types.SimpleNamespace(task=glue.task_by_name(name)), None,
                                          ft.Recipe(epochs=2), [0, 1], log, verbose=False, notify=lambda line: None,
                                          finished=finished.get(name, {}), best=saved.get(name),
                                          on_best=lambda run: saved.__setitem__(run.task, run)).runs]


def test_runs_csv_gives_back_every_number_exactly_and_a_resumed_summary_is_the_uninterrupted_one(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setattr(runs, 'finetune_run', fake_finetune_run([]))
    uninterrupted = finetune_set(tmp_path / 'full', {})
    read_back = runs.read_runs(tmp_path / 'full' / 'runs.csv')
    assert [(r.task, r.run, r.seed, r.history) for r in read_back] == [
        (r.task, r.run, r.seed, r.history) for r in uninterrupted]  # every float equal, not close

    # killed after MRPC's runs, resumed: RTE is trained, MRPC's runs come back from runs.csv
    saved = {}
    finetune_set(tmp_path / 'killed', saved, tasks=('MRPC',))
    trained = []
    monkeypatch.setattr(runs, 'finetune_run', fake_finetune_run(trained))
    resumed = finetune_set(tmp_path / 'killed', saved, resume=True)
    assert trained == [('RTE', 0), ('RTE', 1)]
    (table, average), (resumed_table, resumed_average) = runs.summarize(uninterrupted), runs.summarize(resumed)
    assert average.score == resumed_average.score == pytest.approx(59.33333333)
    pd.testing.assert_frame_equal(table, resumed_table, check_exact=True)
    for name in ('summary.csv', 'summary.md'):
        written = [(runs.save_summary(t, tmp_path / out)[0].parent / name).read_bytes()
                   for t, out in ((table, 'a'), (resumed_table, 'b'))]
        assert written[0] == written[1]
    assert 'GLUE avg,median,,59.3333,' in (tmp_path / 'b' / 'summary.csv').read_text()
    rounded = [dict(task=t, run=s, seed=s, epoch=2, score=float(f'{v:.6g}')) for (t, s), v in SCORES.items()]
    assert f'{runs.summarize(pd.DataFrame(rounded))[1].score:.4f}' == '59.3334'  # what the rounded file gave


def test_a_run_redone_after_a_kill_is_read_as_one_attempt_never_epochs_of_two_mixed(tmp_path):
    log = runs.RunsLog(tmp_path / 'runs.csv')
    row = lambda epoch, score: dict(epoch=epoch, step=epoch, train_loss=0.5, acc=score, score=score, seconds=1.0)
    for epoch in (1, 2): log.append('RTE', 0, 0, row(epoch, 10.0 + epoch))  # finished
    log.append('RTE', 0, 0, row(1, 20.0))                                     # trained again, killed in epoch 2
    assert [r['score'] for r in runs.read_runs(tmp_path / 'runs.csv')[0].history] == [11.0, 12.0]
    for epoch in (1, 2): log.append('RTE', 0, 0, row(epoch, 30.0 + epoch))  # trained again to the end
    assert [r['score'] for r in runs.read_runs(tmp_path / 'runs.csv')[0].history] == [31.0, 32.0]


def with_weights(run):
    return ft.RunResult(run.task, run.run, run.seed, run.history, {'w': torch.tensor([run.seed])})


def test_a_best_run_whose_weights_were_not_saved_is_trained_again_and_ties_go_to_the_earlier_run(monkeypatch):
    trained, saved, notices = [], [], []
    monkeypatch.setattr(runs, 'finetune_run', fake_finetune_run(trained))
    rte = types.SimpleNamespace(task=glue.task_by_name('RTE'))
    finished = {(run, run): ft.RunResult('RTE', run, run, history('RTE', run)) for run in (0, 1)}
    result = runs.finetune_task(rte, None, ft.Recipe(epochs=2), [0, 1], verbose=False, finished=finished,
                                best=with_weights(finished[(0, 0)]),  # on disk: run 1's save was cut
                                on_best=saved.append, notify=notices.append)
    assert trained == [('RTE', 1)] and [r.seed for r in saved] == [1] and result.best.state_dict['w'] == 1
    assert notices[-1] == ('RTE: the best dev run (run 2, seed 1) has no saved weights (stopped while saving them, '
                           'or --save_models false): trained again for the test predictions')
    assert [r.run for r in result.runs] == [0, 1]

    # equal scores: the earlier run is the best, whichever finished first (run 1 before a --resume trains run 0)
    monkeypatch.setitem(SCORES, ('RTE', 0), SCORES[('RTE', 1)])
    trained.clear()
    result = runs.finetune_task(rte, None, ft.Recipe(epochs=2), [0, 1], verbose=False, notify=notices.append,
                                finished={(1, 1): finished[(1, 1)]}, best=with_weights(finished[(1, 1)]))
    assert trained == [('RTE', 0)] and (result.best.run, result.best.seed) == (0, 0)


def test_the_same_results_give_the_same_bytes_the_zip_and_the_best_model_file(tokenizer, tmp_path):
    submission = glue_scores.write_submission({'RTE': ([1, 0], [1, 0])}, tmp_path, wnli_test_indices=[0])
    with zipfile.ZipFile(submission.zip_path) as z:  # no time of writing in the zip
        assert {info.date_time for info in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    body = ElectraModel(ElectraConfig(vocab_size=len(tokenizer), embedding_size=8, hidden_size=16,
                                      num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    pretrained = models.Pretrained(body, tokenizer, 'tiny', 'built in the test')
    run = ft.RunResult('RTE', 0, 0, history('RTE', 0), models.build_classifier(pretrained, 'RTE').state_dict())
    again = ft.RunResult('RTE', 0, 0, [dict(row, seconds=9.9) for row in run.history], run.state_dict)  # slower
    assert models.save_finetuned(run, pretrained, tmp_path / 'a.pth').read_bytes() == \
        models.save_finetuned(again, pretrained, tmp_path / 'b.pth').read_bytes()


def test_what_a_killed_process_left_half_written_is_removed_and_a_live_process_file_is_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    left = tmp_path / 'lr-3e-05' / f'.RTE.pth.tmp{dead.pid}'
    live, kept = tmp_path / f'.summary.csv.tmp{os.getpid()}', tmp_path / '.notes.tmp'
    left.parent.mkdir()
    for path in (left, live, kept): path.write_text('half')
    files.remove_stale_temps(tmp_path, tmp_path / 'absent')
    assert not left.exists() and live.exists() and kept.exists()


# ---------------------------------------------------------------------------------------------------------------
# The script, killed with SIGKILL at chosen and random moments, resumed each time
# ---------------------------------------------------------------------------------------------------------------
# finetune.py with SIGKILL at the `nth` time the process passes KILL_AT's point: a training batch, a dev
# evaluation (its metrics computed, not yet in runs.csv), a best model's save, a submission file or the zip
# (each half written). Nothing runs after a SIGKILL: no finally, no atexit.
KILLABLE_RUN = """
import os, runpy, signal, sys
import torch
import _utils.files as files, _utils.finetuning as ft, _utils.glue_models as models, _utils.glue_scores as scores

point, nth = os.environ.get('KILL_AT', 'never:0').split(':')
passed = 0

def here(where):
    global passed
    if where != point: return False
    passed += 1
    return passed == int(nth)

def kill(): os.kill(os.getpid(), signal.SIGKILL)

def half(write):
    def partial(tmp):
        write(tmp)
        tmp.write_bytes(tmp.read_bytes()[:tmp.stat().st_size // 2])
        kill()
    return partial

after_batch = ft.DevEvaluation.after_batch
def counted_after_batch(self):
    after_batch(self)
    if self.training and here('batch'): kill()
ft.DevEvaluation.after_batch = counted_after_batch
evaluate = ft.evaluate
def counted_evaluate(*args, **kwargs):
    metrics = evaluate(*args, **kwargs)
    if here('evaluate'): kill()
    return metrics
ft.evaluate = counted_evaluate
save, write_text, write = models.atomic_save, scores.atomic_write_text, scores.atomic_write
models.atomic_save = lambda obj, path: (files.atomic_write(path, half(lambda tmp: torch.save(obj, tmp)))
                                        if here('save') else save(obj, path))
scores.atomic_write_text = lambda path, text: (files.atomic_write(path, half(lambda tmp: tmp.write_text(text)))
                                               if here('tsv') else write_text(path, text))
scores.atomic_write = lambda path, fill: files.atomic_write(path, half(fill)) if here('zip') else write(path, fill)
sys.argv = ['finetune.py', *sys.argv[1:]]
runpy.run_path('finetune.py', run_name='__main__')
"""
# 2 tasks x 2 seeds x 2 epochs of 60 rows; at this lr MRPC's run 2 beats its run 1, so a best model is replaced
ARGS = ['--glue_dir', str(HUB_FIXTURE), '--tasks', 'rte,mrpc', '--n_runs', '2', '--epochs', '2', '--batch_size', '16',
        '--lr', '3e-3', '--precision', 'fp32', '--device', 'cpu', '--logger', 'csv', '--group_name', 'g']
ENV = dict(os.environ, OMP_NUM_THREADS='1', ELECTRA_ARGS='', HF_HUB_OFFLINE='1')


@pytest.fixture(scope='module')
def tiny_model(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp('models') / 'tiny-electra'
    torch.manual_seed(0)
    ElectraModel(ElectraConfig(vocab_size=len(tokenizer), embedding_size=8, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def command(out, model, resume=False):
    return [sys.executable, '-c', KILLABLE_RUN, '--model', str(model), *ARGS, '--log_dir', str(out / 'logs'),
            '--checkpoint_dir', str(out / 'ckpt'), '--output_dir', str(out / 'out'), '--resume', str(resume).lower()]


@pytest.fixture(scope='module')
def uninterrupted(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp('uninterrupted')
    proc = subprocess.run(command(out, tiny_model), cwd=PROJECT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def results(out):
    """{file: bytes} of what a set leaves: the summaries, the best models, the test files and the zip."""
    files = [*(out / 'logs' / 'g').glob('summary.*'), *(out / 'ckpt' / 'g').iterdir(), *(out / 'out' / 'g').iterdir()]
    return {str(path.relative_to(out)): path.read_bytes() for path in files}


def run_until(out, model, resume, kill_at, rng):
    """One invocation, killed at `kill_at` ('point:nth'; 'random': SIGKILL from outside, a random time (0-0.5 s)
    after its first new row of runs.csv). Returns (exit status, its output)."""
    env = dict(ENV, KILL_AT=kill_at if ':' in kill_at else 'never:0')
    printed = out / f'printed{len(list(out.glob("printed*")))}.txt'
    with printed.open('w') as f:  # a file, not a pipe: nothing blocks while the test waits
        proc = subprocess.Popen(command(out, model, resume), cwd=PROJECT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if kill_at == 'random':
        runs_csv = out / 'logs' / 'g' / 'runs.csv'
        rows = lambda: len(runs_csv.read_text().splitlines()) if runs_csv.exists() else 0
        start, deadline = rows(), time.time() + 300
        while proc.poll() is None and rows() <= start and time.time() < deadline: time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        if proc.poll() is None: proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    return proc.returncode, printed.read_text()


@pytest.mark.slow
@pytest.mark.parametrize('seed, during_training, during_submission', [(0, 'evaluate', 'tsv'), (1, 'random', 'zip')])
def test_killed_at_any_moment_and_resumed_the_set_ends_as_an_uninterrupted_one(seed, during_training,
                                                                               during_submission, tiny_model,
                                                                               uninterrupted, tmp_path):
    rng = random.Random(seed)
    kills = [f'batch:{rng.randint(1, 16)}',  # inside MRPC run 1 (8 batches an epoch)
             'save:2',                       # MRPC run 2's best model, half written: run 1's stays on disk
             # MRPC run 2 trained again for its weights, or RTE run 1
             {'evaluate': f'evaluate:{rng.randint(1, 3)}', 'random': 'random'}[during_training],
             {'tsv': f'tsv:{rng.randint(1, 3)}', 'zip': 'zip:1'}[during_submission]]  # half written
    outputs = []
    for i, kill_at in enumerate(kills):
        status, stdout = run_until(tmp_path, tiny_model, i > 0, kill_at, rng)
        outputs.append(stdout)
        assert kill_at == 'random' or status == -signal.SIGKILL, f'{kill_at} never came:\n{stdout[-3000:]}'
    assert 'MRPC: the best dev run (run 2, seed 1) has no saved weights' in outputs[2]
    status, stdout = run_until(tmp_path, tiny_model, True, 'never:0', rng)
    assert status == 0, stdout[-3000:]
    expected, got = results(uninterrupted), results(tmp_path)
    assert sorted(got) == sorted(expected)
    assert [name for name in expected if got[name] != expected[name]] == []
    with zipfile.ZipFile(tmp_path / 'out' / 'g' / 'glue_submission.zip') as z:
        assert sorted(z.namelist()) == ['MRPC.tsv', 'RTE.tsv', 'WNLI.tsv']
    assert not [p for p in tmp_path.rglob('*') if '.tmp' in p.name]  # nothing half written is left
