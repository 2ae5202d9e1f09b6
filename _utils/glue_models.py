"""Which model finetunes: a pretrained discriminator body from this project's checkpoint, a Hugging Face folder,
the hub or a random initialisation; the finetuning classifier built on it; and the finetuned-model file."""
import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (CHECKPOINT_DIR, check_own_pair, load_checkpoint, models_from_checkpoint, newest_checkpoint,
                         tokenizer_from_checkpoint)
from .classifier import ElectraClassifier
from .errors import UserError
from .files import atomic_save, safe_load
from .glue import task_by_name
from .positions import use_positions
from .sources import hf_load, hf_model, hf_tokenizer, resolve_model
from .text import load_tokenizer

HIDDEN_TO_SIZE = {128: 'small', 256: 'small', 768: 'base', 1024: 'large'}  # 128: this project's tiny -> Small's


def size_of(electra_config):
    """'small' / 'base' / 'large' from the hidden size (256 / 768 / 1024; the tiny 128 counts as small)."""
    hidden = electra_config.hidden_size
    if hidden in HIDDEN_TO_SIZE: return HIDDEN_TO_SIZE[hidden]
    return 'small' if hidden < 768 else 'base' if hidden < 1024 else 'large'  # an unusual width: the nearest


@dataclass
class Pretrained:
    electra: torch.nn.Module  # a transformers.ElectraModel: the discriminator body without its head
    tokenizer: object
    name: str                 # short, for folder names: checkpoint stem, folder name, hub id, random-<size>
    source: str               # where it came from, for the printout

    @property
    def size(self): return size_of(self.electra.config)

    @property
    def n_layers(self): return self.electra.config.num_hidden_layers


LOCAL_ALTERNATIVES = ("--model latest (newest checkpoint of pretrain.py), a .pth checkpoint path, a folder saved "
                      "with save_pretrained or written by export_huggingface, or --model random")


RANDOM_BODY_SEED = 0  # --model random: one fixed body, whatever --seed (the runs' seeds) is


def load_pretrained(model='latest', size='small', checkpoint_dir=CHECKPOINT_DIR):
    """The discriminator body and its tokenizer, from one of:

    'latest'   the newest checkpoint of pretrain.py in `checkpoint_dir`
    'random'   a randomly initialised discriminator of `size` with the bundled tokenizer (a baseline; always the
               same initialisation, so that a resumed set of runs starts from the same body)
    a .pth     a checkpoint written by pretrain.py
    a folder   a Hugging Face ELECTRA model saved with `save_pretrained` (its tokenizer in the same folder), or
               one written by `export_huggingface` (its discriminator/, or mlm/ for an MLM objective)
    a hub id   e.g. google/electra-small-discriminator (needs network)
    """
    source = resolve_model(model, LOCAL_ALTERNATIVES, latest=lambda: newest_checkpoint(checkpoint_dir),
                           allow_random=True)
    if source.kind == 'random': return _random_body(size)
    if source.kind == 'checkpoint': return _from_checkpoint(source.where)
    if source.kind == 'export':
        folder = source.part('discriminator') or source.part('mlm')
        if folder is None:
            raise UserError(f"--model folder '{source.where}' holds no discriminator/ (nor mlm/) to finetune; give "
                            f'{LOCAL_ALTERNATIVES}')
        return _from_huggingface(folder, source.where.name, f'Hugging Face export {folder.resolve()}')
    if source.kind == 'folder':
        return _from_huggingface(source.where, source.where.name, f'Hugging Face folder {source.where.resolve()}')
    return _from_huggingface(source.where, source.where.replace('/', '_'), f'Hugging Face hub {source.where}')


def _random_body(size):
    """--model random: a fresh discriminator body of `size` with the bundled tokenizer."""
    from transformers import ElectraModel

    from .electra import electra_configs
    tokenizer = load_tokenizer('bundled')
    config = electra_configs(size, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)[1]
    with torch.random.fork_rng(devices=[]):  # a fixed body, without touching the caller's random state
        torch.manual_seed(RANDOM_BODY_SEED)
        electra = ElectraModel(config)
    return Pretrained(electra, tokenizer, f'random-{size}', f'random initialisation ({size}, seed {RANDOM_BODY_SEED})')


def _from_checkpoint(path):
    ckpt = load_checkpoint(path)
    check_own_pair(ckpt, 'finetuned by finetune.py')
    _, discriminator = models_from_checkpoint(ckpt)
    return Pretrained(discriminator.electra, tokenizer_from_checkpoint(ckpt), Path(path).stem,
                      f"checkpoint {Path(path).resolve()} (step {ckpt.get('step', '?')})")


def _electra_body(name_or_path):
    """The discriminator without its head (finetuning puts its own on)."""
    return hf_model(name_or_path, 'model', LOCAL_ALTERNATIVES)


def _from_huggingface(name_or_path, name, source):
    """The body and tokenizer of a Hugging Face folder or hub id. A folder without a tokenizer borrows the bundled
    one where the vocabulary sizes agree."""
    # hf_load again around the body: whatever _electra_body raises (a test stands in for it) becomes one line
    electra = hf_load(lambda: _electra_body(name_or_path), name_or_path, LOCAL_ALTERNATIVES)
    try:
        tokenizer = hf_tokenizer(name_or_path, LOCAL_ALTERNATIVES)
    except UserError:
        if not Path(name_or_path).is_dir(): raise  # a hub id: its tokenizer is part of it
        tokenizer = load_tokenizer('bundled')
        if len(tokenizer) != electra.config.vocab_size:
            raise UserError(f"--model folder '{name_or_path}' has no tokenizer and its vocabulary "
                            f"({electra.config.vocab_size}) is not the bundled one ({len(tokenizer)})") from None
        print(f'{name_or_path} has no tokenizer: using the bundled BERT uncased vocabulary (same size)')
    return Pretrained(electra, tokenizer, name, source)


def check_max_length(pretrained, max_length):
    """Refuse, before any training, a length the model has no position embeddings for."""
    positions = pretrained.electra.config.max_position_embeddings
    if max_length > positions:
        raise UserError(f"--max_length {max_length} is above the model's {positions} positions; give --max_length "
                        f'{positions} or less')


def build_classifier(pretrained, task, dropout=0.1):
    """A fresh copy of the pretrained body with the paper's head (dropout, one Xavier-initialised linear layer)."""
    return ElectraClassifier(copy.deepcopy(pretrained.electra), task_by_name(task).n_outputs, dropout)


FINETUNED_FORMAT = 'electra-fastai-finetuned/1'


def save_finetuned(run, pretrained, path):
    """A run's classifier weights (a RunResult with `state_dict`), with what rebuilds it (`load_finetuned`) and what
    recognises it when resuming (task, run, seed, dev scores). Plain values and tensors only: it loads with
    torch.load(weights_only=True). Written to a temporary file, then renamed. The epoch's wall time is left out:
    a run trained again (--resume) saves the same bytes."""
    dev = {k: v.item() if hasattr(v, 'item') else v for k, v in run.chosen.items() if k != 'seconds'}  # plain numbers
    return atomic_save(dict(format=FINETUNED_FORMAT, task=run.task, run=run.run, seed=run.seed, dev=dev,
                            electra_config=pretrained.electra.config.to_dict(),
                            tokenizer=pretrained.tokenizer.backend_tokenizer.to_str(),
                            state_dict=run.state_dict), path)


def read_finetuned(path):
    """The dict `save_finetuned` wrote, refusing truncated or foreign files with one clear line."""
    saved = safe_load(path, 'finetuned model', 'finetune again or give another file')
    if not isinstance(saved, dict) or not {'task', 'electra_config', 'tokenizer', 'state_dict'} <= saved.keys():
        raise UserError(f"'{path}' is not a finetuned model of this project (finetune.py writes them to "
                        'checkpoints/finetune/)')
    return saved


def load_finetuned(path):
    """(ElectraClassifier, tokenizer) from a file of `save_finetuned` (older files without 'format' load too)."""
    from tokenizers import Tokenizer
    from transformers import ElectraConfig, ElectraModel, ElectraTokenizerFast
    saved = read_finetuned(path)
    body = use_positions(ElectraModel(ElectraConfig.from_dict(saved['electra_config'])))  # TUPE if it was
    model = ElectraClassifier(body, task_by_name(saved['task']).n_outputs)
    model.load_state_dict(saved['state_dict'])
    return model, ElectraTokenizerFast(tokenizer_object=Tokenizer.from_str(saved['tokenizer']))


def classifier_from_result(result, pretrained, device=torch.device('cpu')):
    """The best run's model, rebuilt from its kept weights, in eval mode on `device`."""
    model = build_classifier(pretrained, result.task)
    model.load_state_dict(result.best.state_dict)
    return model.to(device).eval()
