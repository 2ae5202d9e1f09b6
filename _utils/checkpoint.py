"""Pretraining checkpoints: one self-contained file holding everything needed to finetune or to resume.

    {format, step, total_steps, config, generator_config, discriminator_config, tokenizer (tokenizer.json text),
     generator, discriminator (state dicts), optimizer, rng}
"""
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .files import PROJECT_DIR, damage, safe_load, say
from .objectives import DEFAULT_OBJECTIVE, objective_named
from .positions import check_exportable, position_of
from .sources import hf_model, hf_tokenizer, resolve_model

FORMAT = 'electra-fastai-pretrain/1'
CHECKPOINT_DIR = PROJECT_DIR / 'checkpoints' / 'pretrain'


def rng_state():
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain types and tensors only, so that checkpoints load with torch.load(weights_only=True)
    state = dict(python=random.getstate(), numpy=(kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available(): state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def all_ranks_rng_state():
    """Every process's random state, a list indexed by rank, when several processes train together (None for
    one). A collective call: every rank must make it at the same point."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1: return None
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, rng_state())
    return states


def set_rng_state(state):
    random.setstate(state['python'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available(): torch.cuda.set_rng_state_all(state['cuda'])


def make_checkpoint(electra, tokenizer, config, step, total_steps, optimizer=None, with_rng=True):
    """The checkpoint dict (weights on CPU); `config` is a plain dict of the run's settings."""
    cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}
    gen = electra.generator  # None with the mlm objective
    objective = getattr(electra, 'objective', DEFAULT_OBJECTIVE)  # any holder of a generator and a discriminator
    config_of = lambda model: model.config.to_dict() if hasattr(model, 'config') else None  # None: --pair's own
    ckpt = dict(format=FORMAT, step=step, total_steps=total_steps, config=dict(config), objective=objective,
                pair=getattr(electra, 'pair', None),
                generator_config=config_of(gen) if gen is not None else None,
                discriminator_config=config_of(electra.discriminator),
                tokenizer=tokenizer.backend_tokenizer.to_str(),
                generator=cpu(gen.state_dict()) if gen is not None else None,
                discriminator=cpu(electra.discriminator.state_dict()))
    if optimizer is not None: ckpt['optimizer'] = optimizer.state_dict()
    if with_rng: ckpt['rng'] = rng_state()
    return ckpt


def load_checkpoint(path):
    """Read a checkpoint, refusing truncated or foreign files with one clear line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist; pick one in {CHECKPOINT_DIR} or run pretrain.py first")
    ckpt = safe_load(path, 'checkpoint', 'use another checkpoint')
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        raise UserError(f"'{path}' is not a checkpoint of this project (expected format {FORMAT}); "
                        "for Hugging Face models give their folder or hub id instead")
    return ckpt


def tokenizer_from_checkpoint(ckpt):
    from tokenizers import Tokenizer
    from transformers import ElectraTokenizerFast

    # Its case and accent settings go into tokenizer_config.json when saved, and transformers rebuilds the normalizer
    # from them on loading: a cased vocabulary of your own (--tokenizer train) must not come back lower-cased
    normalizer = json.loads(ckpt['tokenizer']).get('normalizer') or {}
    return ElectraTokenizerFast(tokenizer_object=Tokenizer.from_str(ckpt['tokenizer']),
                                do_lower_case=normalizer.get('lowercase', True),
                                strip_accents=normalizer.get('strip_accents'))


def objective_of(ckpt):
    """The pretraining objective a checkpoint was trained with (checkpoints older than the option: the default)."""
    return ckpt.get('objective', DEFAULT_OBJECTIVE)


def models_from_checkpoint(ckpt, pair=''):
    """(generator, discriminator) with the checkpoint's weights, embeddings shared as in training. With an MLM
    objective the discriminator's place holds the MLM model, and `mlm` has no generator (None). A pair of your own
    (`--pair`) is rebuilt only by the function the caller names in `pair` (see `own_pair_named`): the spec recorded in
    the file is never imported."""
    from transformers import ElectraConfig

    from .electra import models_for, pair_from_function
    if recorded_pair(ckpt):
        spec = own_pair_named(ckpt, pair)
        gen, disc = pair_from_function(spec, len(tokenizer_from_checkpoint(ckpt)), ckpt['config']['max_length'])
        disc.load_state_dict(ckpt['discriminator'])
        gen.load_state_dict(ckpt['generator'])
        return gen, disc
    gen_config = ckpt['generator_config'] and ElectraConfig.from_dict(ckpt['generator_config'])
    gen, disc = models_for(gen_config, ElectraConfig.from_dict(ckpt['discriminator_config']), objective_of(ckpt))
    disc.load_state_dict(ckpt['discriminator'])
    if gen is not None: gen.load_state_dict(ckpt['generator'])
    return gen, disc


def newest_checkpoint(directory=CHECKPOINT_DIR, pattern='*.pth', notify=say):
    """The newest checkpoint in `directory` that is whole (`files.damage`): a damaged newer one is skipped, saying
    so in one line."""
    files = sorted(Path(directory).glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    if not files:
        raise UserError(f'no checkpoint in {directory}; run `python pretrain.py` first or give a path')
    damaged = []
    for path in files:
        if not (reason := damage(path)):
            if damaged: notify(f'{", ".join(damaged)}: damaged, skipped; the newest whole checkpoint is {path}')
            return path
        damaged.append(f'{path} ({reason})')
    raise UserError(f'every checkpoint in {directory} is damaged (newest: {damaged[0]}); copy them again or '
                    'start a new run')


def export_huggingface(ckpt, out_dir):
    """Write the discriminator and generator in the Hugging Face format (`from_pretrained` loads them). The second
    model goes to the folder named for its head (the objective's entry): `discriminator/`, or `mlm/` for an
    `ElectraForMaskedLM`; the generator, if the objective has one, to `generator/`. TUPE models are refused before
    anything is written (`positions.check_exportable`)."""
    out_dir = Path(out_dir)
    check_own_pair(ckpt, 'exported to the Hugging Face format')
    gen, disc = models_from_checkpoint(ckpt)
    check_exportable(disc.config)
    tok = tokenizer_from_checkpoint(ckpt)
    main = objective_named(objective_of(ckpt)).head  # discriminator/ or mlm/
    if hasattr(disc, 'copy_gate'): disc = _without_copy_gate(disc)
    for name, model in ((main, disc), ('generator', gen)):
        if model is None: continue
        model.save_pretrained(out_dir / name)
        tok.save_pretrained(out_dir / name)
    return out_dir


def _without_copy_gate(model):
    """All-Tokens MLM's model as the ElectraForMaskedLM it is besides its copy gate, which serves pretraining only:
    what transformers' class loads without a warning about weights it does not know."""
    from transformers import ElectraForMaskedLM
    plain = ElectraForMaskedLM(model.config)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('copy_gate.')})
    return plain


def own_pair_named(ckpt, named):
    """The `--pair` to rebuild a checkpoint's models with: `named`, the one the user gave, checked against the one the
    checkpoint records (same file or module name, same function). Loading never imports or calls what a file names:
    a checkpoint is tensors and plain values, and a pair of your own is code only you can vouch for."""
    recorded, named = recorded_pair(ckpt), named or ''
    if not recorded:
        if named: raise UserError(f"--pair {named}: the checkpoint holds Hugging Face ELECTRA models, not a pair of "
                                  "your own; leave out --pair")
        return ''
    if not named:
        raise UserError(f"the checkpoint holds your own pair ({recorded}); loading never runs code that a file names: "
                        f"give --pair {recorded} on the command line to rebuild it")
    if _pair_key(named) != _pair_key(recorded):
        raise UserError(f"--pair {named} is not the pair the checkpoint was trained with ({recorded}); give that "
                        "file and function")
    return named


def recorded_pair(ckpt):
    """The `--pair` a checkpoint says it was trained with ('' for Hugging Face ELECTRA models): its own field, or the
    run's settings, which name it too."""
    return ckpt.get('pair') or (ckpt.get('config') or {}).get('pair') or ''


def _pair_key(spec):
    """'dir/file.py:make' and 'file.py:make' name the same pair; so do 'pkg.mod:make' and 'mod.py:make'."""
    where, _, name = spec.rpartition(':')
    return Path(where).stem if where.endswith('.py') else where.rpartition('.')[2], name


def check_own_pair(ckpt, what):
    """Refuse, in one line, what only Hugging Face ELECTRA models can do with a checkpoint of a --pair of your own."""
    if recorded := recorded_pair(ckpt):
        raise UserError(f"the checkpoint holds your own pair ({recorded}), which cannot be {what}; its state "
                        "dicts are ckpt['generator'] and ckpt['discriminator'] for your own code")


INIT_ALTERNATIVES = ("a folder holding generator/ and discriminator/, or 'generator,discriminator' (folders or hub "
                     'ids)')


def import_huggingface(source):
    """(generator, discriminator, tokenizer or None) from Hugging Face ELECTRA models, to continue pretraining them.

    `source`: a folder holding `generator/` and `discriminator/` (the published layout, and what
    `export_huggingface` writes), or 'generator,discriminator' as two folders or hub ids (e.g.
    google/electra-small-generator,google/electra-small-discriminator; hub ids need network). The whole embedding
    block is shared again, as in training (the discriminator's copy is kept), and the generator's output layer is
    tied to it. The tokenizer is the discriminator folder's, if it has one."""
    from .electra import share_embeddings
    parts = [p.strip() for p in str(source).split(',') if p.strip()]
    if len(parts) == 1:  # an export's generator/ and discriminator/ (None where missing, or not an export)
        found = resolve_model(parts[0], INIT_ALTERNATIVES, option='--init_from')
        parts = [found.part('generator'), found.part('discriminator')]
    if len(parts) != 2 or None in parts:
        raise UserError(f"--init_from '{source}': give {INIT_ALTERNATIVES}")
    generator, discriminator = [_one_model(part) for part in parts]
    gen = hf_model(generator, 'generator', INIT_ALTERNATIVES, attn_implementation='sdpa')
    disc = hf_model(discriminator, 'discriminator', INIT_ALTERNATIVES, attn_implementation='sdpa')
    if gen.config.embedding_size != disc.config.embedding_size or gen.config.vocab_size != disc.config.vocab_size:
        raise UserError(f'--init_from: the generator\'s embeddings ({gen.config.vocab_size} x '
                        f'{gen.config.embedding_size}) differ in shape from the discriminator\'s '
                        f'({disc.config.vocab_size} x {disc.config.embedding_size}): they cannot be shared')
    share_embeddings(gen, disc)
    try: tokenizer = hf_tokenizer(discriminator, INIT_ALTERNATIVES)
    except UserError: tokenizer = None
    return gen, disc, tokenizer


def _one_model(part):
    """Where one of --init_from's 'generator,discriminator' is: a folder of one model or a hub id."""
    try:
        found = resolve_model(part, INIT_ALTERNATIVES, option='--init_from')
    except UserError:  # a missing path, a folder of neither kind: the one refusal below
        found = None
    if found is None or found.kind not in ('folder', 'hub'):
        raise UserError(f"--init_from: '{part}' is not a folder of one Hugging Face model or a hub id; give Hugging "
                        'Face ELECTRA folders or hub ids')
    return found.where


def restart_point(directory, run_name, seed):
    """In a process that torchrun restarted (`--max-restarts N`) after one of the run's processes died: the run's
    newest whole checkpoint, to continue from. '' at a first start, or when the run had saved none yet."""
    restarts = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0))
    if not restarts: return ''
    try:
        path = newest_checkpoint(directory, f'{run_name}_seed{seed}_*.pth', notify=lambda line: None)
    except UserError:
        return ''
    if int(os.environ.get('RANK', 0)) == 0:
        say(f'Restart {restarts} by torchrun: the run continues from {path}')
    return str(path)


def find_checkpoint(spec, directory=CHECKPOINT_DIR, run_name=None, seed=None):
    """'latest' (the newest checkpoint in `directory`, of `run_name` and of `seed` where given) or a path. Checkpoints
    are named `<run name>_seed<seed>_<step or fraction>.pth`, so runs of several seeds under one name share a folder."""
    if spec != 'latest': return Path(spec)
    if run_name is None and seed is None: return newest_checkpoint(directory)
    return newest_checkpoint(directory, f"{run_name or '*'}_seed{'*' if seed is None else seed}_*.pth")


def load_weights(electra, ckpt, tokenizer=None):
    """Put a checkpoint's weights into `electra`, refusing a tokenizer whose vocabulary differs from the checkpoint's."""
    if tokenizer is not None:
        saved = tokenizer_from_checkpoint(ckpt)
        if saved.get_vocab() != tokenizer.get_vocab():
            raise UserError(f'the tokenizer ({len(tokenizer):,} tokens) does not match the checkpoint\'s '
                            f'({len(saved):,} tokens); use the tokenizer the run was trained with')
    position = position_of(ckpt['discriminator_config'])
    own = position_of(getattr(electra.discriminator, 'config', None))
    if position != own:
        raise UserError(f"the checkpoint was trained with --position {position}, this model has {own}; use "
                        f"--position {position}")
    if objective_of(ckpt) != electra.objective:
        raise UserError(f"the checkpoint was trained with --objective {objective_of(ckpt)}, this model has "
                        f"{electra.objective}; use --objective {objective_of(ckpt)}")
    try:
        if electra.generator is not None: electra.generator.load_state_dict(ckpt['generator'])
        electra.discriminator.load_state_dict(ckpt['discriminator'])
    except RuntimeError as e:
        raise UserError(f'the checkpoint\'s weights do not fit this model ({str(e).splitlines()[0][:150]}); '
                        'resume with the size the run was trained with') from None


def restore_training_state(learn, ckpt, rank=0, world_size=1):
    """Optimizer state and random number generators, so that the run continues exactly where it stopped.

    With several processes each rank gets its own saved random state back. A checkpoint made with another number
    of processes cannot continue exactly: rank 0 takes the saved state, the others a seed of their own."""
    if learn.opt is None: learn.create_opt()
    learn.opt.opt.load_state_dict(ckpt['optimizer'])
    per_rank = ckpt.get('rng_per_rank')
    if per_rank is not None and len(per_rank) == world_size:
        set_rng_state(per_rank[rank])
        return
    set_rng_state(ckpt['rng'])
    if world_size > 1:
        if rank == 0:
            warnings.warn(f"the checkpoint was made by {len(per_rank) if per_rank else 1} process(es), this run has "
                          f'{world_size}: the data order continues exactly, the masking random streams do not')
        torch.manual_seed(int(ckpt.get('config', {}).get('seed', 0)) + 1_000_003 * rank + int(ckpt.get('step', 0)))
