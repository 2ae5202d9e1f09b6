"""Where a model comes from: one reading of a `--model` (or `--init_from`) string, and the quiet Hugging Face loaders
that finetuning (`glue_models`), detection (`detection`) and the import to continue pretraining (`checkpoint`) share.

    'latest'                                   checkpoint  the newest .pth of pretrain.py (found by the caller)
    a file (.pth)                              checkpoint  written by pretrain.py
    a folder with discriminator/, generator/   export      what `export_huggingface` writes (mlm/: an MLM
      or mlm/                                              objective's model)
    a folder with config.json                  folder      one Hugging Face model saved with `save_pretrained`
    'name' or 'owner/name'                     hub         a Hugging Face hub id (needs network)
    'random'                                   random      where the caller allows it (finetuning's baseline)

Whatever reads as a path (`text.looks_like_path`: './x', '/x', '~/x', 'a/b/c', 'x.pth') and is not there is refused
in one line naming what the caller accepts, rather than sent to the hub as an id.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, first_line
from .objectives import HEADS
from .positions import position_named, position_of
from .text import load_tokenizer, looks_like_path

EXPORT_PARTS = HEADS + ('generator',)  # the subfolders export_huggingface writes: discriminator/ or mlm/, generator/


@dataclass(frozen=True)
class ModelSource:
    kind: str      # 'checkpoint', 'export', 'folder', 'hub' or 'random'
    where: object  # a Path (checkpoint, export, folder), the hub id (hub) or None (random)

    def part(self, name):
        """An export's `name` subfolder (discriminator, generator or mlm); None where it has none."""
        if self.kind != 'export' or not (self.where / name).is_dir(): return None
        return self.where / name


def resolve_model(spec, alternatives, latest=None, allow_random=False, option='--model'):
    """The kind of source `spec` names, and where it is (see the table above).

    alternatives  what the caller accepts, for the errors ("--model latest (...), a .pth checkpoint, ...")
    latest        a function giving the newest checkpoint (`checkpoint.newest_checkpoint` of the caller's folder),
                  where 'latest' is accepted; it lives above this module, so the caller passes it in
    allow_random  'random' names a random initialisation (else it is a hub id like any other word)
    option        the command-line flag `spec` came from, for the errors
    """
    spec = str(spec)
    if spec == 'random' and allow_random: return ModelSource('random', None)
    if spec == 'latest' and latest is not None: return ModelSource('checkpoint', Path(latest()))
    path = Path(os.path.expanduser(spec))
    if path.is_file(): return ModelSource('checkpoint', path)  # a foreign file is refused by load_checkpoint
    if path.is_dir():
        if any((path / part).is_dir() for part in EXPORT_PARTS): return ModelSource('export', path)
        if (path / 'config.json').is_file(): return ModelSource('folder', path)
        raise UserError(f"{option} folder '{path}' has neither discriminator/ nor config.json; give {alternatives}")
    if looks_like_path(spec): raise UserError(f"{option} '{spec}' does not exist; give {alternatives}")
    return ModelSource('hub', spec)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face models and tokenizers, quietly, failures in one line
# ---------------------------------------------------------------------------------------------------------------
# role -> the transformers class that loads it; 'model' is the body alone (finetuning puts its own head on)
HF_CLASSES = {'discriminator': 'ElectraForPreTraining', 'generator': 'ElectraForMaskedLM', 'model': 'ElectraModel'}


def hf_load(load, name, alternatives):
    """`load()` quietly (no progress bars, no retry warnings from the hub, no note on the head weights a body leaves
    out), any failure (offline, unknown id, unreadable folder) as one line naming `alternatives`. A UserError passes
    as it is: it is one line already."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging
    levels, bars = (hub_logging.get_verbosity(), hf_logging.get_verbosity()), hf_logging.is_progress_bar_enabled()
    hub_logging.set_verbosity_error()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return load()
    except UserError:
        raise
    except Exception as e:
        local = Path(os.path.expanduser(str(name))).exists()
        where, fix = ('', 'give') if local else ('from the Hugging Face hub ', 'with no network give')
        raise UserError(f"cannot load '{name}' {where}({first_line(e)[:200]}); {fix} {alternatives}") from None
    finally:
        hub_logging.set_verbosity(levels[0])
        hf_logging.set_verbosity(levels[1])
        if bars: hf_logging.enable_progress_bar()


def hf_model(name_or_path, role, alternatives, **from_pretrained):
    """An ELECTRA discriminator, generator or body (`role`, see HF_CLASSES) from a folder or the hub. A config of
    another kind is refused rather than loaded with a randomly initialised head, and so is a position Hugging Face's
    classes do not compute. `from_pretrained`: more arguments for it (attn_implementation, say)."""
    import transformers
    config = hf_load(lambda: transformers.AutoConfig.from_pretrained(str(name_or_path)), name_or_path, alternatives)
    expected = HF_CLASSES[role]
    architectures = config.architectures or [expected]  # a config without them: trusted to be what was asked
    if config.model_type != 'electra' or (role != 'model' and expected not in architectures):
        held = ', '.join(config.architectures or [config.model_type])
        raise UserError(f"'{name_or_path}' holds {held}, not an ELECTRA {role} ({expected}); give the {role}'s "
                        'folder or hub id')
    if not position_named(position_of(config)).exportable:  # Hugging Face's classes compute absolute positions only
        raise UserError(f"'{name_or_path}' is a --position {position_of(config)} model, which Hugging Face's ELECTRA "
                        'classes cannot compute; use its pretraining checkpoint instead')
    model_class = getattr(transformers, expected)
    return hf_load(lambda: model_class.from_pretrained(str(name_or_path), **from_pretrained), name_or_path,
                   alternatives)


def hf_tokenizer(name_or_path, alternatives):
    """The fast tokenizer of a folder or hub id: its character offsets (detection) and its tokenizer.json (saved in
    checkpoints and finetuned files) are what this project reads."""
    def load():
        try:
            return load_tokenizer(str(name_or_path))
        except UserError as e:  # load_tokenizer's line names the tokenizer: say which model it belongs to
            raise UserError(f"cannot load '{name_or_path}': {e}") from None
    tokenizer = hf_load(load, name_or_path, alternatives)
    if not getattr(tokenizer, 'is_fast', False):
        raise UserError(f"the tokenizer of '{name_or_path}' is not a fast tokenizer, whose character offsets and "
                        'tokenizer.json this project reads; save it with tokenizer.json')
    return tokenizer
