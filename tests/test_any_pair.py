"""Any generator and discriminator: the README's plain torch.nn pair trains with a fastai Learner, a pair of your
own checkpoints and is rebuilt by its function (and refused where only Hugging Face models fit), and Hugging Face
ELECTRA folders come in (embeddings shared again) and go out with the same logits."""
import re
from pathlib import Path

import pytest
import torch

from _utils.checkpoint import (export_huggingface, import_huggingface, load_checkpoint, make_checkpoint,
                               models_from_checkpoint)
from _utils.electra import pair_from_function
from _utils.errors import UserError
from _utils.glue_models import load_pretrained
from _utils.pretraining import build_electra

ROOT = Path(__file__).resolve().parents[1]


def readme_pair_code():
    """The README's example of a plain torch.nn pair (the python block after the marker)."""
    text = (ROOT / 'README.md').read_text()
    return re.search(r'<!-- plain torch\.nn pair -->\s*```python\n(.*?)```', text, re.S).group(1)


@pytest.mark.slow
def test_the_readme_plain_torch_pair_trains_with_falling_generator_loss():
    code = readme_pair_code()
    assert 'transformers' not in code and 'learn.fit(1)' in code
    code = code.replace('max_steps=200', 'max_steps=40').replace('total_steps=200', 'total_steps=40')
    code = code.replace('learn.fit(1)', '')
    torch.manual_seed(0)
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)
    learn, electra = scope['learn'], scope['electra']
    assert not any('transformers' in type(m).__module__ for m in electra.modules())
    from fastai.callback.core import Callback

    class RecordMlmLoss(Callback):
        def after_batch(self): seen.append(self.learn.pred.mlm_loss.item())
    seen = []
    learn.add_cb(RecordMlmLoss())
    with learn.no_bar(): learn.fit(1)
    assert len(seen) == 40
    first, last = sum(seen[:5]) / 5, sum(seen[-5:]) / 5
    assert last < first - 0.5, (first, last)       # ln(30,522) = 10.3 at the start


PAIR_FILE = '''
import torch.nn as nn

class Tagger(nn.Module):
    def __init__(self, vocab_size, n_out):
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab_size, 16), nn.Linear(16, n_out)
    def forward(self, input_ids, attention_mask):
        return self.out(self.emb(input_ids)).squeeze(-1)

def make_pair(vocab_size, max_length):
    return Tagger(vocab_size, vocab_size), Tagger(vocab_size, 1)
'''


def test_a_pair_of_your_own_checkpoints_and_is_refused_where_only_hf_fits(tokenizer, tmp_path):
    (tmp_path / 'mine.py').write_text(PAIR_FILE)
    spec = f"{tmp_path / 'mine.py'}:make_pair"
    torch.manual_seed(0)
    electra = build_electra('tiny', tokenizer, max_length=32, pair=spec)
    ids = torch.randint(1000, 29_000, (2, 32))
    out = electra(ids, torch.zeros_like(ids))
    assert out.disc_logits.shape == (2, 32) and out.mlm_logits.shape[-1] == len(tokenizer)
    ckpt = make_checkpoint(electra, tokenizer, {'max_length': 32, 'pair': spec}, 1, 1, with_rng=False)
    assert ckpt['pair'] == spec and ckpt['discriminator_config'] is None
    gen, disc = models_from_checkpoint(ckpt, pair=spec)
    mask = torch.ones_like(ids)
    torch.testing.assert_close(disc(ids, mask), electra.discriminator(ids, mask))
    torch.save(ckpt, tmp_path / 'own.pth')
    with pytest.raises(UserError, match='your own pair .* cannot be finetuned by finetune.py'):
        load_pretrained(str(tmp_path / 'own.pth'))
    with pytest.raises(UserError, match='cannot be exported to the Hugging Face format'):
        export_huggingface(load_checkpoint(tmp_path / 'own.pth'), tmp_path / 'hf')
    assert not (tmp_path / 'hf').exists()


@pytest.mark.parametrize('spec, message', [
    ('no_colon', "must be 'file.py:function'"),
    ('missing.py:make', "'missing.py' does not exist"),
    ('json:no_such_function', "cannot load it"),
])
def test_a_bad_pair_spec_is_one_line(spec, message):
    with pytest.raises(UserError, match=message) as e:
        pair_from_function(spec, 100, 32)
    assert '\n' not in str(e.value)


def test_huggingface_folders_in_and_out_give_the_same_logits(tokenizer, tmp_path):
    torch.manual_seed(0)
    electra = build_electra('tiny', tokenizer, max_length=32).eval()
    first = export_huggingface(make_checkpoint(electra, tokenizer, {}, 1, 1, with_rng=False), tmp_path / 'a')
    gen, disc, tok = import_huggingface(first)                           # a folder with generator/, discriminator/
    assert gen.electra.embeddings is disc.electra.embeddings           # the sharing is restored
    assert gen.generator_lm_head.weight is disc.electra.embeddings.word_embeddings.weight
    assert tok.get_vocab() == tokenizer.get_vocab()
    again = build_electra('tiny', tok, max_length=32, init_from=(gen, disc))
    second = export_huggingface(make_checkpoint(again, tok, {}, 1, 1, with_rng=False), tmp_path / 'b')
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    ids = torch.randint(1000, 29_000, (2, 24))
    with torch.no_grad():
        for cls, name, original in ((ElectraForPreTraining, 'discriminator', electra.discriminator),
                                    (ElectraForMaskedLM, 'generator', electra.generator)):
            reloaded = cls.from_pretrained(second / name).eval()
            torch.testing.assert_close(reloaded(ids).logits, original(ids).logits, rtol=0, atol=1e-5)
    gen2, disc2, _ = import_huggingface(f"{first / 'generator'},{first / 'discriminator'}")  # two folders
    assert gen2.electra.embeddings is disc2.electra.embeddings


def test_huggingface_import_refuses_bad_input_in_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        import_huggingface(f'{tmp_path}/nothing,{tmp_path}/none')
    with pytest.raises(UserError, match="give a folder holding generator/ and discriminator/"):
        import_huggingface(f'{tmp_path}/a,{tmp_path}/b,{tmp_path}/c')


def _pretrain(tmp_path, *args):
    import os
    import subprocess
    import sys
    res = subprocess.run([sys.executable, 'pretrain.py', '--size', 'tiny', '--compile', 'none', '--batch_size', '4',
                          '--max_length', '32',
                          '--precision', 'fp32', '--device', 'cpu', '--logger', 'csv', '--log_every', '1',
                          '--warmup_steps', '1', '--lr', '1e-4', '--checkpoint_fractions', '1',
                          '--checkpoint_dir', str(tmp_path / 'ckpt'), '--log_dir', str(tmp_path / 'logs'), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_pretrain_py_trains_a_pair_of_your_own_and_resumes_it(tmp_path):
    (tmp_path / 'mine.py').write_text(PAIR_FILE)
    spec = f"{tmp_path / 'mine.py'}:make_pair"
    out = _pretrain(tmp_path, '--pair', spec, '--run_name', 'own', '--max_steps', '3', '--save_every', '2')
    assert f'your own pair ({spec})' in out
    out = _pretrain(tmp_path, '--resume', str(tmp_path / 'ckpt' / 'own_seed0_step2.pth'), '--pair', spec)
    assert 'from step 2' in out and 'your own pair' in out
    assert load_checkpoint(tmp_path / 'ckpt' / 'own_seed0_100pct.pth')['step'] == 3


@pytest.mark.slow
def test_pretrain_py_continues_huggingface_models(tokenizer, tmp_path):
    torch.manual_seed(0)
    electra = build_electra('tiny', tokenizer, max_length=32)
    folder = export_huggingface(make_checkpoint(electra, tokenizer, {}, 1, 1, with_rng=False), tmp_path / 'hf')
    out = _pretrain(tmp_path, '--init_from', str(folder), '--run_name', 'cont', '--max_steps', '2')
    assert 'Training 2 steps' in out
    ckpt = load_checkpoint(tmp_path / 'ckpt' / 'cont_seed0_100pct.pth')
    start = electra.discriminator.state_dict()
    moved = max((ckpt['discriminator'][k] - start[k]).abs().max().item() for k in start)
    assert 0 < moved < 0.01  # two small steps from the imported weights, not a fresh initialisation
    assert torch.equal(ckpt['generator']['electra.embeddings.word_embeddings.weight'],
                       ckpt['discriminator']['electra.embeddings.word_embeddings.weight'])  # still shared
