"""Where a model comes from (`_utils/sources.py`): one reading of --model / --init_from for finetuning, detection and
the import, with one path test, and the Hugging Face loaders they share."""
import json

import pytest
import torch
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from _utils import glue_models as models
from _utils.errors import UserError
from _utils.sources import ModelSource, hf_load, hf_model, resolve_model
from _utils.text import looks_like_path

ALTERNATIVES = 'a checkpoint, an export or a folder'


def tiny_config(vocab_size, **kw):
    return ElectraConfig(vocab_size=vocab_size, embedding_size=8, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=64, **kw)


def write_config(folder, **config):
    folder.mkdir(parents=True)
    (folder / 'config.json').write_text(json.dumps(config))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# The one path test
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('spec', ['./x', '/x', '~/x', 'a/b/c', 'x.pth', 'x.pt', 'vocab.txt', 'config.json'])
def test_paths_look_like_paths(spec):
    assert looks_like_path(spec)


@pytest.mark.parametrize('spec', ['bert-base-uncased', 'google/electra-small-discriminator', 'wikitext:raw'])
def test_hub_ids_do_not(spec):
    assert not looks_like_path(spec)


# ---------------------------------------------------------------------------------------------------------------
# The kinds of source
# ---------------------------------------------------------------------------------------------------------------
def test_a_file_is_a_checkpoint_and_latest_is_the_callers_newest(tmp_path):
    (tmp_path / 'run.pth').write_bytes(b'')
    assert resolve_model(str(tmp_path / 'run.pth'), ALTERNATIVES) == ModelSource('checkpoint', tmp_path / 'run.pth')
    newest = resolve_model('latest', ALTERNATIVES, latest=lambda: tmp_path / 'run.pth')
    assert newest == ModelSource('checkpoint', tmp_path / 'run.pth')
    assert resolve_model('latest', ALTERNATIVES) == ModelSource('hub', 'latest')  # no `latest` given: a word


def test_a_folder_with_config_json_is_one_model(tmp_path):
    folder = write_config(tmp_path / 'disc', model_type='electra')
    source = resolve_model(str(folder), ALTERNATIVES)
    assert source == ModelSource('folder', folder) and source.part('discriminator') is None


def test_a_folder_with_discriminator_and_generator_is_an_export(tmp_path):
    for part in ('discriminator', 'generator'): write_config(tmp_path / 'hf' / part, model_type='electra')
    source = resolve_model(str(tmp_path / 'hf'), ALTERNATIVES)
    assert source == ModelSource('export', tmp_path / 'hf')
    assert source.part('discriminator') == tmp_path / 'hf' / 'discriminator'
    assert source.part('generator') == tmp_path / 'hf' / 'generator' and source.part('mlm') is None


def test_an_mlm_export_is_an_export_too(tmp_path):
    write_config(tmp_path / 'hf' / 'mlm', model_type='electra')
    source = resolve_model(str(tmp_path / 'hf'), ALTERNATIVES)
    assert source.kind == 'export' and source.part('discriminator') is None and source.part('mlm') is not None


@pytest.mark.parametrize('spec', ['google/electra-small-discriminator', 'electra-small'])
def test_a_name_or_owner_name_is_a_hub_id(spec):
    assert resolve_model(spec, ALTERNATIVES) == ModelSource('hub', spec)


def test_random_only_where_the_caller_allows_it():
    assert resolve_model('random', ALTERNATIVES, allow_random=True) == ModelSource('random', None)
    assert resolve_model('random', ALTERNATIVES).kind == 'hub'


@pytest.mark.parametrize('spec', ['./no_such_model', 'a/b/c', 'gone.pth'])
def test_a_missing_path_is_one_line_naming_the_callers_alternatives(spec):
    with pytest.raises(UserError, match=f"^--init_from '{spec}' does not exist; give {ALTERNATIVES}$"):
        resolve_model(spec, ALTERNATIVES, option='--init_from')


def test_a_folder_of_neither_kind_is_refused(tmp_path):
    with pytest.raises(UserError, match=f'has neither discriminator/ nor config.json; give {ALTERNATIVES}'):
        resolve_model(str(tmp_path), ALTERNATIVES)


# ---------------------------------------------------------------------------------------------------------------
# The Hugging Face loaders
# ---------------------------------------------------------------------------------------------------------------
def test_a_failure_while_loading_is_one_line_naming_the_alternatives():
    def offline():
        raise OSError("We couldn't connect to 'https://huggingface.co'\nand more")
    with pytest.raises(UserError, match=f"^cannot load 'someone/model' from the Hugging Face hub .*couldn't connect"
                                        f".*; with no network give {ALTERNATIVES}$"):
        hf_load(offline, 'someone/model', ALTERNATIVES)

    def refused():
        raise UserError('already one clear line')
    with pytest.raises(UserError, match='^already one clear line$'):  # passes as it is
        hf_load(refused, 'someone/model', ALTERNATIVES)


def test_a_config_of_another_kind_or_position_is_refused_before_any_weights(tmp_path):
    bert = write_config(tmp_path / 'bert', model_type='bert', architectures=['BertForMaskedLM'])
    with pytest.raises(UserError, match='holds BertForMaskedLM, not an ELECTRA discriminator'):
        hf_model(bert, 'discriminator', ALTERNATIVES)
    generator = write_config(tmp_path / 'gen', model_type='electra', architectures=['ElectraForMaskedLM'])
    with pytest.raises(UserError, match='holds ElectraForMaskedLM, not an ELECTRA discriminator'):
        hf_model(generator, 'discriminator', ALTERNATIVES)
    rope = write_config(tmp_path / 'rope', model_type='electra', position='rope')
    with pytest.raises(UserError, match="--position rope model, which Hugging Face's ELECTRA classes cannot compute"):
        hf_model(rope, 'model', ALTERNATIVES)


def test_finetuning_takes_an_exports_discriminator(tokenizer, tmp_path):
    torch.manual_seed(0)
    disc, gen = ElectraForPreTraining(tiny_config(len(tokenizer))), ElectraForMaskedLM(tiny_config(len(tokenizer)))
    for name, model in (('discriminator', disc), ('generator', gen)):
        model.save_pretrained(tmp_path / 'hf' / name)
        tokenizer.save_pretrained(tmp_path / 'hf' / name)
    pretrained = models.load_pretrained(str(tmp_path / 'hf'))
    assert pretrained.name == 'hf' and 'discriminator' in pretrained.source
    torch.testing.assert_close(pretrained.electra.state_dict(), disc.electra.state_dict(), rtol=0, atol=0)
