"""GLUE finetuning and submission, as RECIPE.md states them ("GLUE finetuning", "GLUE test submission")."""
import math
import re
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from _utils import classifier, glue, glue_data, glue_scores
from _utils.errors import UserError
from _utils.glue import TASKS, TaskUnavailable
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef
from transformers import ElectraConfig, ElectraModel

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
HUB_FIXTURE = Path(__file__).resolve().parent / 'fixtures' / 'glue_hf'
needs_shared = pytest.mark.skipif(not (SHARED / 'glue').is_dir(), reason='../shared/data is absent')

# SOURCES.md: data rows of the shared classic files and hub parquet (split -> rows; missing splits absent)
SHARED_COUNTS = {'CoLA': {'train': 8551, 'dev': 1043, 'test': 1063},
                 'SST-2': {'train': 67349, 'dev': 872, 'test': 1821},
                 'MRPC': {'train': 3668, 'dev': 408, 'test': 1725}, 'STS-B': {'train': 5749, 'test': 1379},
                 'QNLI': {'dev': 5463, 'test': 5463}, 'RTE': {'train': 2490, 'test': 3000},
                 'WNLI': {'train': 635, 'dev': 71, 'test': 146}, 'AX': {'test': 1104}}
# datasets/glue_sample/README.md
SAMPLE_COUNTS = {'CoLA': {'train': 300, 'dev': 150, 'test': 150}, 'SST-2': {'train': 300, 'dev': 150, 'test': 150},
                 'MRPC': {'train': 300, 'dev': 150, 'test': 150}, 'STS-B': {'train': 300, 'test': 150},
                 'QNLI': {'dev': 150, 'test': 150}, 'RTE': {'train': 300, 'test': 150},
                 'WNLI': {'train': 300, 'dev': 71, 'test': 146}, 'AX': {'test': 150}}


@pytest.fixture(scope='session')
def tokenizer():
    from _utils.text import load_tokenizer
    return load_tokenizer('bundled')


@pytest.fixture(scope='session')
def hf_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp('hf_cache'))


def rows(ds):
    """Rows as tuples, with nan labels made comparable."""
    return [tuple('nan' if isinstance(v, float) and math.isnan(v) else v for v in r.values()) for r in ds.to_list()]


# ---------------------------------------------------------------------------------------------------------------
# Task table
# ---------------------------------------------------------------------------------------------------------------
def test_tasks_epochs_3_but_10_for_rte_and_stsb():
    assert {t.name: t.epochs for t in TASKS.values() if t.predicted_by is None} == \
        {'CoLA': 3, 'SST-2': 3, 'MRPC': 3, 'STS-B': 10, 'QQP': 3, 'MNLI': 3, 'QNLI': 3, 'RTE': 10, 'WNLI': 3}


def test_tasks_label_orders_are_the_classic_tsv_ones():
    assert TASKS['MNLI'].labels == TASKS['AX'].labels == ('contradiction', 'entailment', 'neutral')
    assert TASKS['QNLI'].labels == TASKS['RTE'].labels == ('entailment', 'not_entailment')
    assert all(TASKS[t].labels == ('0', '1') for t in ('CoLA', 'SST-2', 'MRPC', 'QQP', 'WNLI'))
    assert TASKS['STS-B'].is_regression and TASKS['STS-B'].n_outputs == 1


def test_tasks_metrics_and_doubling():
    assert {t.name: (t.main_metric, t.metrics) for t in TASKS.values() if t.name in glue.GLUE_AVERAGE_TASKS} == {
        'CoLA': ('mcc', ('mcc',)), 'SST-2': ('acc', ('acc',)), 'MRPC': ('acc', ('acc', 'f1')),
        'STS-B': ('spearman', ('spearman', 'pearson')), 'QQP': ('acc', ('acc', 'f1')), 'MNLI': ('acc', ('acc',)),
        'QNLI': ('acc', ('acc',)), 'RTE': ('acc', ('acc',))}
    assert [t.name for t in TASKS.values() if t.doubled] == ['MRPC', 'STS-B']


def test_task_by_name_accepts_case_and_aliases():
    for alias, name in [('sst2', 'SST-2'), ('stsb', 'STS-B'), ('sts-b', 'STS-B'), ('mnli-m', 'MNLI'),
                        ('MNLI-mm', 'MNLI'), ('cola', 'CoLA'), ('ax', 'AX'), ('diagnostic', 'AX'), ('Rte', 'RTE')]:
        assert glue.task_by_name(alias).name == name


def test_task_by_name_unknown_says_did_you_mean():
    with pytest.raises(UserError, match="did you mean 'MRPC'"):
        glue.task_by_name('MRCP')


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------
def test_bundled_sample_loads_every_task_with_uniform_columns():
    for name, counts in SAMPLE_COUNTS.items():
        task = TASKS[name]
        ds = glue.load_glue_tsv(name)  # the bundled sample is the default
        assert {split: len(d) for split, d in ds.items()} == counts
        for split, d in ds.items():
            assert d.column_names == (['sentence1', 'sentence2'] if task.is_pair else ['sentence1']) + ['label', 'idx']
            if split.startswith('test'):
                assert list(d['idx']) == list(range(len(d)))  # the files' own index: 0, 1, 2 ... in the sample
                assert all(math.isnan(x) for x in d['label']) if task.is_regression else set(d['label']) == {-1}
            elif task.is_regression:
                assert 0 <= min(d['label']) and max(d['label']) <= 5
            else:
                assert set(d['label']) <= set(range(len(task.labels)))


@pytest.mark.parametrize('config', sorted(p.name for p in HUB_FIXTURE.iterdir() if p.is_dir()))
def test_hub_parquet_rows_equal_tsv_rows(config, hf_cache):
    # The fixture holds the hub's first 60 rows of each split; the bundled tsv sample starts with the same rows.
    hub = glue.load_glue_hub(config, parquet_dir=HUB_FIXTURE, cache_dir=hf_cache)
    tsv = glue.load_glue_tsv(config)
    assert set(hub) <= set(tsv)  # the fixture has no SST-2 train
    for split in hub:
        assert rows(hub[split]) == rows(tsv[split].select(range(len(hub[split]))))


def test_hub_label_order_mapped_to_tsv_order_for_rte(hf_cache):
    # hub RTE: 0=entailment 1=not_entailment; tsv row 0 says not_entailment -> class 1 of the tsv order
    hub = glue.load_glue_hub('RTE', parquet_dir=HUB_FIXTURE, cache_dir=hf_cache)['train']
    assert TASKS['RTE'].labels[hub[0]['label']] == 'not_entailment'


def write_tsv(path, header, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(['\t'.join(header)] * bool(header) + ['\t'.join(line) for line in lines]) + '\n')


MNLI_FIRST = ['index', 'promptID', 'pairID', 'genre', 'sentence1_binary_parse', 'sentence2_binary_parse',
              'sentence1_parse', 'sentence2_parse', 'sentence1', 'sentence2']


def mnli_row(i, a, b, *labels):
    return [str(i), '1', f'{i}e', 'fiction', '( x )', '( y )', '(ROOT x)', '(ROOT y)', a, b, *labels]


@pytest.fixture
def mnli_folders(tmp_path):
    """A made-up MNLI in the classic layout (12 / 16 / 10 columns) and the same rows as hub parquet."""
    glue_dir, hub_dir = tmp_path / 'glue', tmp_path / 'hub'
    write_tsv(glue_dir / 'MNLI' / 'train.tsv', MNLI_FIRST + ['label1', 'gold_label'],
              [mnli_row(0, 'A dog runs.', 'An animal moves.', 'entailment', 'entailment'),
               mnli_row(1, 'A dog runs.', 'A dog sleeps.', 'contradiction', 'contradiction'),
               mnli_row(2, 'A dog runs.', 'The dog is brown.', 'neutral', 'neutral')])
    write_tsv(glue_dir / 'MNLI' / 'dev_matched.tsv', MNLI_FIRST + [f'label{i}' for i in range(1, 6)] + ['gold_label'],
              [mnli_row(0, 'It rains.', 'It is dry.', *['contradiction'] * 5, 'contradiction')])
    write_tsv(glue_dir / 'MNLI' / 'test_matched.tsv', MNLI_FIRST, [mnli_row(7, 'It snows.', 'It is cold.')])
    hub_labels = datasets.ClassLabel(names=['entailment', 'neutral', 'contradiction'])
    for split, data in [('train', (['A dog runs.'] * 3, ['An animal moves.', 'A dog sleeps.', 'The dog is brown.'],
                                   [0, 2, 1], [0, 1, 2])),
                        ('validation_matched', (['It rains.'], ['It is dry.'], [2], [0])),
                        ('test_matched', (['It snows.'], ['It is cold.'], [-1], [7]))]:
        features = datasets.Features({'premise': datasets.Value('string'), 'hypothesis': datasets.Value('string'),
                                      'label': hub_labels, 'idx': datasets.Value('int32')})
        ds = datasets.Dataset.from_dict(dict(zip(['premise', 'hypothesis', 'label', 'idx'], data)), features=features)
        (hub_dir / 'mnli').mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(hub_dir / 'mnli' / f'{split}-00000-of-00001.parquet'))
    return glue_dir, hub_dir


def test_mnli_classic_layout_gold_label_last_and_hub_order_mapped(mnli_folders, hf_cache):
    glue_dir, hub_dir = mnli_folders
    tsv = glue.load_glue_tsv('MNLI', glue_dir)
    hub = glue.load_glue_hub('MNLI', parquet_dir=hub_dir, cache_dir=hf_cache)
    assert set(tsv) == set(hub) == {'train', 'dev_matched', 'test_matched'}
    # tsv order contradiction=0 entailment=1 neutral=2; hub order entailment=0 neutral=1 contradiction=2
    assert list(tsv['train']['label']) == list(hub['train']['label']) == [1, 0, 2]
    assert list(tsv['dev_matched']['label']) == [0]
    assert tsv['test_matched'][0] == {'sentence1': 'It snows.', 'sentence2': 'It is cold.', 'label': -1, 'idx': 7}
    for split in tsv:
        assert rows(tsv[split]) == rows(hub[split])


def test_qqp_classic_layout_with_id_columns(tmp_path):
    write_tsv(tmp_path / 'QQP' / 'train.tsv', ['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'],
              [['5', '1', '2', 'How do I cook rice?', 'How is rice cooked?', '1']])
    write_tsv(tmp_path / 'QQP' / 'test.tsv', ['id', 'question1', 'question2'], [['3', 'Why?', 'Why not?']])
    ds = glue.load_glue_tsv('QQP', tmp_path)
    assert ds['train'][0] == {'sentence1': 'How do I cook rice?', 'sentence2': 'How is rice cooked?',
                              'label': 1, 'idx': 0}
    assert ds['test'][0] == {'sentence1': 'Why?', 'sentence2': 'Why not?', 'label': -1, 'idx': 3}


def test_extra_columns_are_ignored(tmp_path):
    write_tsv(tmp_path / 'RTE' / 'train.tsv', ['index', 'note', 'sentence1', 'sentence2', 'label', 'extra'],
              [['0', 'n', 'A man sleeps.', 'A person rests.', 'entailment', 'x']])
    assert glue.load_glue_tsv('RTE', tmp_path)['train'][0]['sentence2'] == 'A person rests.'


def one_line_error(excinfo):
    message = str(excinfo.value)
    assert '\n' not in message
    return message


def test_missing_task_files_raise_task_unavailable(tmp_path):
    (tmp_path / 'CoLA').mkdir()
    with pytest.raises(TaskUnavailable) as e:
        glue.load_glue_tsv('CoLA', tmp_path)
    assert 'CoLA/train.tsv' in one_line_error(e)


def test_missing_required_split_names_the_file(tmp_path):
    write_tsv(tmp_path / 'RTE' / 'test.tsv', ['index', 'sentence1', 'sentence2'], [['0', 'a', 'b']])
    assert set(glue.load_glue_tsv('RTE', tmp_path)) == {'test'}  # what exists, the caller decides
    with pytest.raises(TaskUnavailable) as e:
        glue.load_glue_tsv('RTE', tmp_path, required=('train',))
    assert 'RTE/train.tsv: file not found' in one_line_error(e)


def test_wrong_header_raises_task_unavailable(tmp_path):
    write_tsv(tmp_path / 'RTE' / 'train.tsv', ['index', 'premise', 'hypothesis', 'label'],
              [['0', 'a', 'b', 'entailment']])
    with pytest.raises(TaskUnavailable) as e:
        glue.load_glue_tsv('RTE', tmp_path)
    assert "RTE/train.tsv: no column 'sentence1', 'sentence2'" in one_line_error(e)


def test_cola_with_wrong_column_count_raises_task_unavailable(tmp_path):
    write_tsv(tmp_path / 'CoLA' / 'train.tsv', [], [['gj04', '1', '', 'Fine.'], ['gj04', '1', 'Too few.']])
    with pytest.raises(TaskUnavailable) as e:
        glue.load_glue_tsv('CoLA', tmp_path)
    assert 'CoLA/train.tsv line 2: 3 columns, expected 4' in one_line_error(e)


def test_unknown_label_raises_task_unavailable(tmp_path):
    write_tsv(tmp_path / 'RTE' / 'train.tsv', ['index', 'sentence1', 'sentence2', 'label'], [['0', 'a', 'b', 'maybe']])
    with pytest.raises(TaskUnavailable, match="RTE/train.tsv line 2: label 'maybe' is not one of"):
        glue.load_glue_tsv('RTE', tmp_path)


def test_hub_without_network_names_glue_dir(monkeypatch):
    def offline(*args, **kwargs): raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")
    monkeypatch.setattr(glue.datasets, 'load_dataset', offline)
    with pytest.raises(UserError, match='--glue_dir') as e:
        glue.load_glue_hub('CoLA')
    assert 'nyu-mll/glue' in one_line_error(e)


def test_split_off_dev_is_deterministic_10_percent():
    train = glue.load_glue_tsv('RTE', splits=('train',))['train']
    rest, dev = glue.split_off_dev(train, fraction=0.1, seed=0)
    assert (len(rest), len(dev)) == (270, 30)
    assert sorted(list(rest['idx']) + list(dev['idx'])) == list(range(300))
    assert list(dev['idx']) == list(glue.split_off_dev(train, fraction=0.1, seed=0)[1]['idx'])
    assert list(dev['idx']) != list(glue.split_off_dev(train, fraction=0.1, seed=1)[1]['idx'])


@pytest.mark.shared_data
@needs_shared
@pytest.mark.parametrize('name', list(SHARED_COUNTS), ids=str)
def test_shared_classic_files_have_the_official_counts(name):
    ds = glue.load_glue_tsv(name, SHARED / 'glue')
    assert {split: len(d) for split, d in ds.items()} == SHARED_COUNTS[name]


@pytest.mark.shared_data
@needs_shared
@pytest.mark.parametrize('name', list(SHARED_COUNTS), ids=str)
def test_shared_hub_parquet_rows_equal_classic_rows(name, hf_cache):
    hub = glue.load_glue_hub(name, parquet_dir=SHARED / 'glue_hf_parquet', cache_dir=hf_cache)
    tsv = glue.load_glue_tsv(name, SHARED / 'glue')
    expected = {s: n for s, n in SHARED_COUNTS[name].items() if not (name in ('SST-2', 'QNLI') and s == 'train')}
    assert {split: len(d) for split, d in hub.items()} == expected  # SST-2 and QNLI train: no parquet copy
    for split in hub:
        assert rows(hub[split]) == rows(tsv[split])


@pytest.mark.shared_data
@needs_shared
def test_bundled_sample_is_the_start_of_the_classic_files():
    for path in sorted(glue.BUNDLED_GLUE_DIR.glob('*/*.tsv')):
        sample = path.read_bytes()
        assert (SHARED / 'glue' / path.relative_to(glue.BUNDLED_GLUE_DIR)).read_bytes()[:len(sample)] == sample
    assert (glue.BUNDLED_GLUE_DIR / 'MRPC' / 'train.tsv').read_bytes()[:3] == b'\xef\xbb\xbf'  # the BOM


def test_bundled_sample_is_small():
    assert sum(p.stat().st_size for p in glue.BUNDLED_GLUE_DIR.rglob('*') if p.is_file()) < 1_000_000


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------
def pop_from_longer(len_a, len_b, budget):
    """The official truncation, one token at a time."""
    while len_a + len_b > budget:
        if len_a > len_b: len_a -= 1
        else: len_b -= 1
    return len_a, len_b


def test_truncation_pops_from_the_longer_side():
    for len_a in range(0, 140, 3):
        for len_b in range(0, 140, 2):
            assert glue_data.truncated_lengths(len_a, len_b, 125) == pop_from_longer(len_a, len_b, 125)


def encode_pair(tokenizer, a, b=None):
    ds = datasets.Dataset.from_dict({'sentence1': [a], **({'sentence2': [b]} if b else {}), 'label': [0], 'idx': [0]})
    return glue_data.encode(ds, tokenizer, max_length=128)[0]


def test_long_pair_truncated_to_128_as_cls_a_sep_b_sep(tokenizer):
    example = encode_pair(tokenizer, ' '.join(['cat'] * 100), ' '.join(['dog'] * 100))
    cat, dog = tokenizer.convert_tokens_to_ids(['cat', 'dog'])
    assert len(example['input_ids']) == 128
    # 125 tokens of text: both sides cut; on the tie the official code pops b first, so a keeps 63, b 62
    assert example['input_ids'] == [101] + [cat] * 63 + [102] + [dog] * 62 + [102]
    assert example['token_type_ids'] == [0] * 65 + [1] * 63


def test_long_side_only_is_cut_when_the_other_is_short(tokenizer):
    example = encode_pair(tokenizer, ' '.join(['cat'] * 200), 'a small dog')
    assert len(example['input_ids']) == 128 and example['input_ids'][-5:] == [102, 1037, 2235, 3899, 102]


def test_single_sentence_truncated_to_128(tokenizer):
    example = encode_pair(tokenizer, ' '.join(['cat'] * 200))
    assert len(example['input_ids']) == 128 and example['input_ids'][0] == 101 and example['input_ids'][-1] == 102
    assert example['token_type_ids'] == [0] * 128


def test_short_pair_equals_the_tokenizers_own_layout(tokenizer):
    a, b = 'The cat sat on the mat.', "It wasn't sitting."
    example = encode_pair(tokenizer, a, b)
    reference = tokenizer(a, b)
    assert example['input_ids'] == reference['input_ids']
    assert example['token_type_ids'] == reference['token_type_ids']


def test_special_token_strings_in_a_sentence_are_split_like_text_not_special_ids(tokenizer):
    a, b = 'The [PAD] cat [MASK] sat.', 'A [SEP] dog [CLS] ran [UNK] away.'
    example = encode_pair(tokenizer, a, b)
    specials = {tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.sep_token_id, tokenizer.cls_token_id,
                tokenizer.unk_token_id}
    ids = example['input_ids']
    assert [i for i, t in enumerate(ids) if t in specials] == [0, ids.index(102), len(ids) - 1]  # [CLS] A [SEP] B [SEP]
    assert tokenizer.convert_ids_to_tokens(ids[2:5]) == ['[', 'pad', ']']    # as the official tokenizer splits it


def test_encode_keeps_label_and_idx(tokenizer):
    ds = glue_data.encode(glue.load_glue_tsv('STS-B', splits=('train',))['train'].select(range(8)), tokenizer)
    assert ds.column_names == ['label', 'idx', 'input_ids', 'token_type_ids'] and ds[0]['label'] == 5.0


@pytest.mark.parametrize('name', ['MRPC', 'STS-B'])
def test_training_data_doubled_with_swapped_sentences(name):
    train = glue.load_glue_tsv(name, splits=('train',))['train']
    doubled = glue.double_with_swapped(train)
    assert len(doubled) == 2 * len(train) == 600
    for i in (0, 123, 299):
        original, swapped = doubled[i], doubled[i + 300]
        assert original == train[i]
        assert (swapped['sentence1'], swapped['sentence2']) == (original['sentence2'], original['sentence1'])
        assert (swapped['label'], swapped['idx']) == (original['label'], original['idx'])


# ---------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------
def padded_fraction(batches, lengths):
    return 1 - sum(lengths[b].sum() for b in batches) / sum(len(b) * lengths[b].max() for b in batches)


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(5, 128, size=3000)
    sampler = glue_data.LengthGroupedBatchSampler(lengths, batch_size=32, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 94
    assert sorted(sum(batches, [])) == list(range(3000))
    random_batches = [np.arange(i, min(i + 32, 3000)) for i in range(0, 3000, 32)]
    assert padded_fraction(batches, lengths) < 0.05 < 0.3 < padded_fraction(random_batches, lengths)


def test_length_grouped_batches_are_seeded_and_reshuffled_each_epoch():
    lengths = np.random.default_rng(0).integers(5, 128, size=500)
    first = glue_data.LengthGroupedBatchSampler(lengths, 32, seed=0)
    epoch0, epoch1 = list(first), list(first)
    assert epoch0 == list(glue_data.LengthGroupedBatchSampler(lengths, 32, seed=0))
    assert epoch0 != epoch1
    assert epoch0 != list(glue_data.LengthGroupedBatchSampler(lengths, 32, seed=1))
    assert sum(list(glue_data.LengthGroupedBatchSampler(lengths, 32, shuffle=False)), []) == list(range(500))


def test_collate_pads_to_the_longest_with_zeros():
    examples = [{'input_ids': [101, 7, 102], 'token_type_ids': [0, 0, 0], 'label': 1},
                {'input_ids': [101, 7, 102, 8, 102], 'token_type_ids': [0, 0, 0, 1, 1], 'label': 0}]
    input_ids, attention_mask, token_type_ids, labels = glue_data.collate(examples)
    assert input_ids.tolist() == [[101, 7, 102, 0, 0], [101, 7, 102, 8, 102]]
    assert attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert token_type_ids.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert labels.tolist() == [1, 0] and labels.dtype == torch.long
    assert glue_data.collate([{**examples[0], 'label': 3.8}])[3].dtype == torch.float32


def test_dataloader_yields_model_ready_batches(tokenizer):
    encoded = glue_data.encode(glue.load_glue_tsv('MRPC', splits=('dev',))['dev'], tokenizer)
    batches = list(glue_data.glue_dataloader(encoded, batch_size=32, seed=0))
    assert sum(len(b[3]) for b in batches) == 150 and all(b[0].shape == b[1].shape == b[2].shape for b in batches)


# ---------------------------------------------------------------------------------------------------------------
# Head, loss, predictions
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def small_electra():
    torch.manual_seed(0)
    config = ElectraConfig(vocab_size=30522, embedding_size=128, hidden_size=256, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=1024)
    return ElectraModel(config)


def test_head_is_dropout_then_one_xavier_linear_with_zero_bias(small_electra):
    model = classifier.ElectraClassifier(small_electra, n_outputs=3)
    head = {n for n, _ in model.named_parameters() if not n.startswith('electra.')}
    assert head == {'classifier.weight', 'classifier.bias'}  # no dense+GELU, no pooler
    assert model.dropout.p == 0.1
    weight = model.classifier.weight.detach()
    assert weight.shape == (3, 256) and torch.all(model.classifier.bias == 0)
    bound = math.sqrt(6 / (256 + 3))  # Xavier-uniform
    assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
    assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)


def test_head_reads_the_cls_vector(small_electra):
    model = classifier.ElectraClassifier(small_electra, n_outputs=2).eval()
    input_ids = torch.tensor([[101, 2000, 2001, 102, 0], [101, 2003, 102, 2004, 102]])
    mask, types = (input_ids != 0).long(), torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]])
    logits = model(input_ids, mask, types)
    hidden = small_electra(input_ids=input_ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert logits.shape == (2, 2) and torch.allclose(logits, model.classifier(hidden[:, 0]), atol=1e-6)


def test_stsb_loss_is_mse_on_target_over_5_and_predictions_are_the_raw_output_times_5():
    logits, targets = torch.tensor([[-0.1], [0.5], [1.2]]), torch.tensor([0.0, 2.0, 5.0])
    loss = classifier.loss_for('STS-B', 'mean')(logits, targets)
    assert torch.isclose(loss, ((logits.squeeze(-1) - targets / 5) ** 2).mean())
    # not clipped: dev metrics use the raw outputs (the official scorer); the submission file clips
    assert glue_scores.predictions_from_logits('STS-B', logits).tolist() == pytest.approx([-0.5, 2.5, 6.0])


def test_classification_loss_is_cross_entropy_and_predictions_argmax():
    logits, labels = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.5]]), torch.tensor([0, 2])
    assert torch.isclose(classifier.loss_for('MNLI', 'mean')(logits, labels),
                         torch.nn.functional.cross_entropy(logits, labels))
    assert glue_scores.predictions_from_logits('MNLI', logits).tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------
PRED = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
GOLD = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])


def test_metrics_equal_sklearn_and_scipy_in_percent():
    assert glue_scores.compute_metrics('CoLA', PRED, GOLD) == {'mcc': pytest.approx(100 * matthews_corrcoef(GOLD, PRED))}
    assert glue_scores.compute_metrics('MRPC', PRED, GOLD) == {'acc': pytest.approx(70.0),
                                                        'f1': pytest.approx(100 * f1_score(GOLD, PRED))}
    scores, gold = np.array([0.5, 2.0, 3.1, 4.9, 1.0]), np.array([0.0, 2.4, 3.0, 5.0, 2.0])
    assert glue_scores.compute_metrics('STS-B', scores, gold) == {
        'spearman': pytest.approx(100 * spearmanr(scores, gold)[0]),
        'pearson': pytest.approx(100 * pearsonr(scores, gold)[0])}
    metrics = glue_scores.compute_metrics('STS-B', scores, gold)  # same ranks, not linear: Spearman 100, Pearson less
    assert glue_scores.main_score('STS-B', metrics) == pytest.approx(100.0) and metrics['pearson'] < 99


def test_glue_average_is_over_the_8_tasks_without_wnli():
    # ELECTRA-Small-OWT (RECIPE.md): 80.36 over CoLA SST MRPC STS QQP MNLI QNLI RTE
    owt = {'CoLA': 56.8, 'SST-2': 88.3, 'MRPC': 87.4, 'STS-B': 86.8,
           'QQP': 88.3, 'MNLI': 78.9, 'QNLI': 87.9, 'RTE': 68.5}
    average = glue_scores.glue_average({**owt, 'WNLI': 10.0, 'AX': 0.0})
    assert average.score == pytest.approx(80.36, abs=0.01) and average.missing == []
    assert glue_scores.glue_average({**owt, 'MNLI': 78.9, 'MNLI-mm': 0.0}).score == pytest.approx(80.36, abs=0.01)
    partial = glue_scores.glue_average({'cola': 50.0, 'sst2': 90.0})
    assert partial.score == 70.0 and partial.missing == ['MRPC', 'STS-B', 'QQP', 'MNLI', 'QNLI', 'RTE']


# ---------------------------------------------------------------------------------------------------------------
# Test submission
# ---------------------------------------------------------------------------------------------------------------
SUBMISSION_VOCAB = {'CoLA': {'0', '1'}, 'SST-2': {'0', '1'}, 'MRPC': {'0', '1'}, 'QQP': {'0', '1'}, 'WNLI': {'0'},
                    'MNLI-m': {'entailment', 'neutral', 'contradiction'},
                    'MNLI-mm': {'entailment', 'neutral', 'contradiction'},
                    'AX': {'entailment', 'neutral', 'contradiction'},
                    'QNLI': {'entailment', 'not_entailment'}, 'RTE': {'entailment', 'not_entailment'}}


@pytest.fixture(scope='module')
def full_submission(tmp_path_factory):
    """Made-up predictions at the official test sizes for every file but WNLI (which defaults to class 0)."""
    rng = np.random.default_rng(0)
    predictions = {}
    for stem, size in glue.TEST_SIZES.items():
        if stem == 'WNLI': continue
        task = TASKS[glue.SUBMISSION_FILES[stem][0]]
        values = rng.uniform(-1, 6, size) if task.is_regression else rng.integers(0, len(task.labels), size)
        predictions[stem] = (np.arange(size), values)
    out = tmp_path_factory.mktemp('submission')
    return glue_scores.write_submission(predictions, out)


def read_submission(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split('\t') for line in lines[1:]]


def test_submission_zip_holds_the_11_files_at_top_level(full_submission):
    assert sorted(zipfile.ZipFile(full_submission.zip_path).namelist()) == sorted(
        'CoLA.tsv SST-2.tsv MRPC.tsv STS-B.tsv QQP.tsv MNLI-m.tsv MNLI-mm.tsv QNLI.tsv RTE.tsv WNLI.tsv AX.tsv'.split())
    assert full_submission.missing == [] and full_submission.wrong_sizes == {}


@pytest.mark.slow
def test_submission_files_have_header_and_one_row_per_test_example_in_order(full_submission):
    for path in full_submission.files:
        header, body = read_submission(path)
        assert header == 'index\tprediction'
        assert [int(index) for index, _ in body] == list(range(glue.TEST_SIZES[path.stem]))
    assert [len(read_submission(p)[1]) for p in full_submission.files] == \
        [1063, 1821, 1725, 1379, 390965, 9796, 9847, 5463, 3000, 146, 1104]


def test_submission_label_vocabulary_per_file(full_submission):
    for path in full_submission.files:
        if path.stem != 'STS-B':
            assert {p for _, p in read_submission(path)[1]} == SUBMISSION_VOCAB[path.stem], path.stem


def test_submission_stsb_floats_with_3_decimals_clipped_to_0_5(full_submission):
    values = [p for _, p in read_submission(full_submission.files[3])[1]]
    assert all(re.fullmatch(r'\d\.\d{3}', v) for v in values)
    assert min(map(float, values)) == 0.0 and max(map(float, values)) == 5.0  # uniform(-1, 6) got clipped


def test_submission_reports_missing_files_and_sorts_by_index(tmp_path, capsys):
    result = glue_scores.write_submission({'RTE': ([2, 0, 1], [1, 0, 1])}, tmp_path, wnli_test_indices=range(146))
    assert result.missing == ['CoLA', 'SST-2', 'MRPC', 'STS-B', 'QQP', 'MNLI-m', 'MNLI-mm', 'QNLI', 'AX']
    assert 'needs all 11 files' in capsys.readouterr().out
    assert read_submission(tmp_path / 'RTE.tsv')[1] == [['0', 'entailment'], ['1', 'not_entailment'],
                                                        ['2', 'not_entailment']]
    assert sorted(zipfile.ZipFile(result.zip_path).namelist()) == ['RTE.tsv', 'WNLI.tsv']
    assert not list(tmp_path.glob('*.tmp'))  # written atomically


def test_submission_rejects_unknown_file_names(tmp_path):
    with pytest.raises(UserError, match='MNLI-m'):
        glue_scores.write_submission({'MNLI': ([0], [0])}, tmp_path)
