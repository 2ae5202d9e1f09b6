"""Logging: every backend gets the rows, and a failing logger never stops training."""
import csv
import sys

import pytest
import torch
from _utils import callbacks, loggers
from _utils.electra import step_metrics
from _utils.loggers import MetricsLogger
from _utils.pretraining import build_electra, pretraining_learner, step_dataloader
from _utils.text import load_tokenizer

TOKENIZER = load_tokenizer('bundled')


class Examples:
    """16 short synthetic examples: [CLS] 10 word pieces [SEP] padding."""
    def __init__(self):
        ids = torch.zeros(16, 16, dtype=torch.long)
        ids[:, 0], ids[:, 11] = TOKENIZER.cls_token_id, TOKENIZER.sep_token_id
        ids[:, 1:11] = torch.randint(1000, 2000, (16, 10), generator=torch.Generator().manual_seed(0))
        self.data = {'input_ids': ids, 'token_type_ids': torch.zeros_like(ids)}

    def __len__(self): return 16

    def __getitem__(self, idx): return {k: v[idx] for k, v in self.data.items()}


def train(logger, steps=3):
    torch.manual_seed(0)
    electra = build_electra('tiny', TOKENIZER, max_length=16)
    dl = step_dataloader(Examples(), batch_size=4, max_steps=steps, seed=0)
    learn = pretraining_learner(electra, dl, lr=1e-3, total_steps=steps, warmup_steps=1, precision='fp32',
                                extra_cbs=[logger])
    learn.fit(1)
    return learn


class Broken:
    def __init__(self, *args): pass
    def log(self, row): raise OSError('disk full')
    def close(self): pass


def test_a_failing_logger_is_dropped_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(loggers._BACKENDS, 'broken', Broken)
    logger = MetricsLogger(tmp_path, step_metrics, every=1, loggers=('broken', 'csv'), total_steps=3)
    with pytest.warns(UserWarning, match='logger broken failed'):
        learn = train(logger)
    assert learn.step == 3
    assert [int(r['step']) for r in csv.DictReader((tmp_path / 'metrics.csv').open())] == [1, 2, 3]


def test_an_unwritable_log_folder_turns_logging_off_not_training(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    logger = MetricsLogger(blocker / 'logs', step_metrics, every=1, loggers=('csv',), total_steps=3)
    with pytest.warns(UserWarning, match='cannot create the log folder'):
        learn = train(logger)
    assert learn.step == 3 and len(logger.history) == 3


def test_tensorboard_writes_event_files(tmp_path):
    train(MetricsLogger(tmp_path, step_metrics, every=1, loggers=('tensorboard',), total_steps=3))
    assert list(tmp_path.glob('events.out.tfevents.*'))


def test_neptune_logs_offline_without_a_server(tmp_path, monkeypatch):
    pytest.importorskip('neptune')
    monkeypatch.chdir(tmp_path)                       # offline runs are written under ./.neptune/
    monkeypatch.delenv('NEPTUNE_MODE', raising=False)
    train(MetricsLogger(tmp_path / 'logs', step_metrics, every=1, loggers=('neptune',), total_steps=3))
    assert list((tmp_path / '.neptune' / 'offline').glob('run__*'))


@pytest.mark.slow
def test_mlflow_logs_locally_without_a_server(tmp_path, monkeypatch):
    mlflow = pytest.importorskip('mlflow')
    monkeypatch.delenv('MLFLOW_TRACKING_URI', raising=False)        # the default store: logs/mlruns
    monkeypatch.setenv('MLFLOW_ALLOW_FILE_STORE', '')               # restored after the test (the logger sets it)
    monkeypatch.delenv('MLFLOW_ALLOW_FILE_STORE')
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    monkeypatch.chdir(cwd)                                          # a store in the default ./mlruns would show here
    log_dir = tmp_path / 'logs' / 'pretrain' / 'demo_seed0'
    train(MetricsLogger(log_dir, step_metrics, every=1, loggers=('mlflow',), run_name='demo_seed0',
                        config={'lr': 0.001, 'run_name': 'demo', 'long': 'x' * 10_000}, total_steps=3))
    assert not list(cwd.iterdir())
    client = mlflow.tracking.MlflowClient((tmp_path / 'logs' / 'mlruns').as_uri())
    experiment = client.get_experiment_by_name('electra-pretrain')
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == 'demo_seed0' and run.info.status == 'FINISHED'
    assert run.data.params['lr'] == '0.001' and len(run.data.params['long']) <= 500
    assert [m.step for m in client.get_metric_history(run.info.run_id, 'loss')] == [1, 2, 3]
    assert {'loss', 'lr'} <= set(run.data.metrics)


def test_pretraining_and_finetuning_runs_share_one_mlflow_store(tmp_path):
    logs = tmp_path.resolve() / 'logs'
    assert loggers._mlflow_home(logs / 'pretrain' / 'small_run1_seed0') == (logs / 'mlruns', 'electra-pretrain')
    finetuning = logs / 'finetune' / 'small' / 'cola_run0_seed3'
    assert loggers._mlflow_home(finetuning) == (logs / 'mlruns', 'electra-finetune')


def test_without_mlflow_the_logger_says_how_to_install_it_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'mlflow', None)                 # import mlflow fails
    logger = MetricsLogger(tmp_path, step_metrics, every=1, loggers=('mlflow', 'csv'), total_steps=3)
    with pytest.warns(UserWarning, match='logger mlflow disabled.*pip install mlflow'):
        learn = train(logger)
    assert learn.step == 3 and list(logger.backends) == ['csv']
    assert (tmp_path / 'metrics.csv').exists()


# ---------------------------------------------------------------------------------------------------------------
# Nothing in the step reads values back from the device
# ---------------------------------------------------------------------------------------------------------------
class NanAt(callbacks.Callback):
    """Makes the loss of one step non-finite (before NonFiniteLoss looks at it)."""
    order = 12

    def __init__(self, step): self.at = step

    def after_loss(self):
        if self.learn.step + 1 == self.at:
            self.learn.loss_grad = self.learn.loss_grad * float('nan')
            self.learn.loss = self.learn.loss_grad.clone()


def test_a_deferred_nonfinite_check_stops_one_step_later_and_never_saves_the_bad_weights(tmp_path):
    # On a GPU the check of step k's loss happens during step k+1; a checkpoint due at step k checks first.
    saved = []
    ckpt = callbacks.Checkpointer(tmp_path, 'run', 0, 4, lambda learn: saved.append(learn.step) or {'step': learn.step},
                                  fractions=(0.25, 0.5, 1.0))
    stop = callbacks.NonFiniteLoss(deferred=True)
    torch.manual_seed(0)
    electra = build_electra('tiny', TOKENIZER, max_length=16)
    learn = pretraining_learner(electra, step_dataloader(Examples(), 4, 4, seed=0), lr=1e-3, total_steps=4,
                                warmup_steps=1, precision='fp32', extra_cbs=[ckpt, stop, NanAt(2)])
    learn.fit(1)
    assert 'the loss became nan at step 2' in learn.stop_reason
    assert saved == [1]                                   # the checkpoint due after step 2 was not written
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['run_seed0_25pct.pth']


def test_an_immediate_nonfinite_check_stops_before_the_update():
    stop = callbacks.NonFiniteLoss(deferred=False)
    torch.manual_seed(0)
    electra = build_electra('tiny', TOKENIZER, max_length=16)
    learn = pretraining_learner(electra, step_dataloader(Examples(), 4, 4, seed=0), lr=1e-3, total_steps=4,
                                warmup_steps=1, precision='fp32', extra_cbs=[stop, NanAt(2)])
    learn.fit(1)
    assert 'the loss became nan at step 2' in learn.stop_reason and learn.step == 1
    assert all(torch.isfinite(p).all() for p in electra.parameters())


def test_the_smoothed_loss_stays_on_the_device_and_the_history_is_bounded():
    logger = MetricsLogger('/tmp/unused', step_metrics, every=1, loggers=(), total_steps=3)
    learn = train(logger)
    losses = [row['loss'] for row in logger.history]               # each step's loss (logged every step)
    expected = 0.0
    for loss in losses: expected = 0.98 * expected + 0.02 * loss   # fastai's AvgSmoothLoss, debiased below
    expected /= 1 - 0.98 ** len(losses)
    assert isinstance(learn.smooth_loss, torch.Tensor)
    assert abs(float(learn.smooth_loss) - expected) < 1e-4 * abs(expected)
    assert learn.recorder.losses.maxlen == 10_000 and len(learn.recorder.losses) == 3


def test_the_progress_bar_that_reads_the_loss_every_n_steps_is_the_learners_progress_bar():
    from _utils.callbacks import StepProgress
    electra = build_electra('tiny', TOKENIZER, max_length=16)
    learn = pretraining_learner(electra, step_dataloader(Examples(), 4, 2, seed=0), lr=1e-3, total_steps=2,
                                warmup_steps=1, precision='fp32', progress_every=7)
    assert isinstance(learn.progress, StepProgress) and learn.progress.every == 7
    assert sum(isinstance(cb, callbacks.ProgressCallback) for cb in learn.cbs) == 1
    with learn.no_bar():
        assert not any(isinstance(cb, callbacks.ProgressCallback) for cb in learn.cbs)
