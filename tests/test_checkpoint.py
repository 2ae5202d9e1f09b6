"""Pretraining checkpoints: one self-contained file that round-trips, refuses foreign files, and exports to HF."""
import copy
import errno
import random
from pathlib import Path

import numpy as np

import pytest
import torch
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from _utils import checkpoint
from _utils.files import atomic_save
from _utils.electra import ELECTRA, share_embeddings
from _utils.errors import UserError
from _utils.optim import make_optimizer
from _utils.text import load_tokenizer


@pytest.fixture(scope='module')
def electra(tokenizer):
    """A very small generator + discriminator over the full 30,522-token vocabulary, embeddings shared."""
    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), embedding_size=16, num_hidden_layers=2, max_position_embeddings=64)
    disc = ElectraForPreTraining(ElectraConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, **common))
    gen = ElectraForMaskedLM(ElectraConfig(hidden_size=16, num_attention_heads=1, intermediate_size=32, **common))
    share_embeddings(gen, disc)
    return ELECTRA(gen, disc, mask_token_id=tokenizer.mask_token_id,
                   special_token_ids=[tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, 0])


@pytest.fixture(scope='module')
def saved(electra, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'run_seed0_50pct.pth'
    ckpt = checkpoint.make_checkpoint(electra, tokenizer, dict(size='custom', lr=5e-4), step=500, total_steps=1000)
    atomic_save(ckpt, path)
    return path


def assert_same_weights(model, state_dict):
    mine = model.state_dict()
    assert set(mine) == set(state_dict)
    for name, tensor in state_dict.items():
        assert torch.equal(mine[name], tensor), name


# ---------------------------------------------------------------------------------------------------------------
# Round trip
# ---------------------------------------------------------------------------------------------------------------
def test_round_trip_gives_identical_weights(electra, saved):
    gen, disc = checkpoint.models_from_checkpoint(checkpoint.load_checkpoint(saved))
    assert_same_weights(gen, electra.generator.state_dict())
    assert_same_weights(disc, electra.discriminator.state_dict())


def test_round_trip_keeps_the_embedding_block_shared(saved):
    gen, disc = checkpoint.models_from_checkpoint(checkpoint.load_checkpoint(saved))
    assert gen.electra.embeddings is disc.electra.embeddings
    assert gen.generator_lm_head.weight.data_ptr() == disc.electra.embeddings.word_embeddings.weight.data_ptr()


def test_round_trip_gives_a_tokenizer_with_the_same_vocab(tokenizer, saved):
    tok = checkpoint.tokenizer_from_checkpoint(checkpoint.load_checkpoint(saved))
    assert tok.get_vocab() == tokenizer.get_vocab() and len(tok) == 30_522
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == \
        (0, 100, 101, 102, 103)
    text = 'Héllo, ELECTRA discriminators!'
    assert tok(text)['input_ids'] == tokenizer(text)['input_ids']


def test_checkpoint_keeps_step_total_steps_and_config(saved):
    ckpt = checkpoint.load_checkpoint(saved)
    assert (ckpt['step'], ckpt['total_steps'], ckpt['config']) == (500, 1000, dict(size='custom', lr=5e-4))


def test_optimizer_state_round_trips(electra, tokenizer, tmp_path):
    electra = copy.deepcopy(electra)                            # the step below must not change the shared fixture
    opt = make_optimizer(electra, lr=1e-3)
    for p in electra.parameters(): p.grad = torch.full_like(p, 0.1)
    opt.step()
    electra.zero_grad(set_to_none=True)
    path = atomic_save(checkpoint.make_checkpoint(electra, tokenizer, {}, 1, 10, optimizer=opt),
                                      tmp_path / 'a.pth')
    restored = make_optimizer(electra, lr=1e-3)
    restored.load_state_dict(checkpoint.load_checkpoint(path)['optimizer'])
    for p in electra.parameters():
        assert torch.equal(restored.state[p]['exp_avg'], opt.state[p]['exp_avg'])
        assert torch.equal(restored.state[p]['exp_avg_sq'], opt.state[p]['exp_avg_sq'])


def test_rng_state_round_trips(saved):
    ckpt = checkpoint.load_checkpoint(saved)
    draw = lambda: (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    checkpoint.set_rng_state(ckpt['rng'])
    first = draw()
    checkpoint.set_rng_state(ckpt['rng'])
    assert draw() == first


# ---------------------------------------------------------------------------------------------------------------
# Refusing bad files
# ---------------------------------------------------------------------------------------------------------------
def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        checkpoint.load_checkpoint(tmp_path / 'nope.pth')


def test_truncated_checkpoint_is_a_user_error(saved, tmp_path):
    data = saved.read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match='truncated'):
        checkpoint.load_checkpoint(tmp_path / 'cut.pth')


def test_foreign_torch_file_is_a_user_error(tmp_path):
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    with pytest.raises(UserError, match='not a checkpoint of this project'):
        checkpoint.load_checkpoint(tmp_path / 'list.pth')


def test_foreign_state_dict_is_a_user_error(electra, tmp_path):
    torch.save(electra.discriminator.state_dict(), tmp_path / 'weights.pth')
    with pytest.raises(UserError, match='not a checkpoint of this project'):
        checkpoint.load_checkpoint(tmp_path / 'weights.pth')


def test_text_file_is_a_user_error(tmp_path):
    (tmp_path / 'notes.pth').write_text('not a checkpoint\n')
    with pytest.raises(UserError, match='cannot be read'):
        checkpoint.load_checkpoint(tmp_path / 'notes.pth')


# ---------------------------------------------------------------------------------------------------------------
# Atomic saves
# ---------------------------------------------------------------------------------------------------------------
def test_failed_save_leaves_the_previous_file_intact_and_no_temp_files(tmp_path, monkeypatch):
    path = atomic_save({'version': 1}, tmp_path / 'ckpt.pth')
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.flush(); f.truncate(10)                                 # partial bytes on disk, then the failure
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', dies_midway)
    with pytest.raises(UserError, match='no space left on the disk to write .*ckpt.pth .*the earlier file there is '
                       'intact') as error:
        atomic_save({'version': 2}, path)
    assert '\n' not in str(error.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False) == {'version': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pth']


def test_save_replaces_the_previous_file(tmp_path):
    atomic_save({'version': 1}, tmp_path / 'ckpt.pth')
    atomic_save({'version': 2}, tmp_path / 'ckpt.pth')
    assert torch.load(tmp_path / 'ckpt.pth', weights_only=False) == {'version': 2}
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt.pth']


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face export
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def exported(saved, tmp_path_factory):
    return checkpoint.export_huggingface(checkpoint.load_checkpoint(saved), tmp_path_factory.mktemp('hf'))


def test_exported_discriminator_loads_with_equal_weights(electra, exported):
    disc = ElectraForPreTraining.from_pretrained(exported / 'discriminator')
    assert_same_weights(disc, electra.discriminator.state_dict())


def test_exported_generator_loads_with_equal_weights(electra, exported):
    gen = ElectraForMaskedLM.from_pretrained(exported / 'generator')
    assert_same_weights(gen, electra.generator.state_dict())


def test_exported_tokenizer_loads_with_the_same_vocab(tokenizer, exported):
    from transformers import AutoTokenizer
    for name in ('discriminator', 'generator'):
        assert AutoTokenizer.from_pretrained(exported / name).get_vocab() == tokenizer.get_vocab()


def test_a_tokenizer_that_does_not_match_the_checkpoint_is_refused(tmp_path):
    from _utils.checkpoint import load_weights
    from _utils.pretraining import build_electra
    tok = load_tokenizer('bundled')
    electra = build_electra('tiny', tok, max_length=32)
    ckpt = checkpoint.make_checkpoint(electra, tok, {'size': 'tiny'}, step=1, total_steps=2)
    vocab = (Path(__file__).resolve().parents[1] / 'datasets' / 'vocab' / 'bert-uncased-vocab.txt').read_text().splitlines()
    vocab[2000] = 'zzzunseen'                                  # one word piece differs
    (tmp_path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
    with pytest.raises(UserError, match="does not match the checkpoint"):
        load_weights(electra, ckpt, load_tokenizer(tmp_path / 'vocab.txt'))
    load_weights(electra, ckpt, tok)                          # the matching one is accepted
