"""Run by tests/test_distributed.py under torchrun: a few data-parallel steps, then a report of what this rank saw.

    ddp_worker.py OUT            3 steps, a checkpoint at the end
    ddp_worker.py OUT stop       rank 1 alone is "signalled" after step 1: both ranks must stop there together
    ddp_worker.py OUT resume     restore the checkpoint of the first mode and report each rank's random state
    ddp_worker.py OUT nan        rank 1 alone gets a non-finite loss at step 2: both ranks must stop there
"""
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _utils.callbacks import Checkpointer, GracefulStop, NonFiniteLoss
from _utils.checkpoint import restore_training_state, rng_state  # noqa: E402
from _utils.electra import step_metrics  # noqa: E402
from _utils.learner import init_distributed, seed_everything, seed_masking
from _utils.loggers import MetricsLogger
from _utils.pretraining import build_electra, pretraining_learner, step_dataloader
from _utils.text import load_tokenizer  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402

out = Path(sys.argv[1])
mode = sys.argv[2] if len(sys.argv) > 2 else 'train'
rank, world_size, _ = init_distributed()
seed_everything(0)
tokenizer = load_tokenizer('bundled')
# 32 distinct synthetic examples; example i carries the token 1000 + i so each rank can report what it saw
ids = torch.full((32, 16), tokenizer.pad_token_id)
ids[:, 0], ids[:, 1:11], ids[:, 11] = tokenizer.cls_token_id, 2000, tokenizer.sep_token_id
ids[:, 1] = 1000 + torch.arange(32)
examples = {'input_ids': ids, 'token_type_ids': torch.zeros_like(ids)}


class Examples:
    def __len__(self): return 32
    def __getitem__(self, idx): return {k: v[idx] for k, v in examples.items()}


electra = build_electra('tiny', tokenizer, max_length=16)
seed_masking(0, rank, world_size)
dl = step_dataloader(Examples(), batch_size=8, max_steps=3, seed=0, rank=rank, world_size=world_size)
seen = [int(t) - 1000 for batch in dl for t in batch[0][:, 1]]


def make_checkpoint(learn):
    (out / f'checkpoint_written_by_rank{rank}').touch()
    return {'step': learn.step, 'optimizer': learn.opt.opt.state_dict(), 'rng': rng_state()}


class SignalRank1(Callback):
    order = 64  # just before GracefulStop looks

    def after_batch(self):
        if rank == 1 and self.learn.step == 1: stopper.signal_name = 'SIGTERM'


class NanOnRank1(Callback):
    order = 12  # after the loss, before NonFiniteLoss

    def after_loss(self):
        if rank == 1 and self.learn.step + 1 == 2: self.learn.loss_grad = self.learn.loss_grad * float('nan')


checkpointer = Checkpointer(out / 'ckpt', 'ddp', 0, 3, make_checkpoint, fractions=(1.0,), rank=rank)
stopper = GracefulStop(checkpointer, world_size, agree_every=1)
cbs = [checkpointer, stopper, MetricsLogger(out / 'logs', step_metrics, every=1, loggers=('csv',), rank=rank,
                                            total_steps=3)]
if mode == 'stop': cbs.append(SignalRank1())
if mode == 'nan': cbs += [NanOnRank1(), NonFiniteLoss(world_size=world_size)]
learn = pretraining_learner(electra, dl, lr=1e-3, total_steps=3, warmup_steps=1, precision='fp32',
                            device=torch.device('cpu'), extra_cbs=cbs, rank=rank, world_size=world_size)
if mode == 'resume':
    learn.create_opt()
    restore_training_state(learn, torch.load(out / 'ckpt' / 'ddp_seed0_100pct.pth', weights_only=True), rank,
                           world_size)
    (out / f'resumed_rank{rank}.json').write_text(json.dumps({'torch_rng': torch.get_rng_state().tolist()}))
    sys.exit(0)
learn.fit(1)
weights = torch.cat([p.detach().flatten() for p in electra.parameters()])
(out / f'rank{rank}.json').write_text(json.dumps({
    'world_size': world_size, 'seen': seen, 'steps': learn.step, 'stop_reason': getattr(learn, 'stop_reason', ''),
    'weights_sha': hashlib.sha256(weights.numpy().tobytes()).hexdigest()}))
