"""Detecting and correcting replaced words (`_utils/detection.py`, `detect.py`): a swapped word is found, pieces
combine into words at their place in the text, the generator's proposals, and the script as a user runs it.

The fixture models are trained here, in a few seconds: a tiny discriminator that tells the words of a handful of
sentences from uniformly random replacements, and a tiny generator that fills in their masked words."""
import concurrent.futures
import copy
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from _utils.checkpoint import export_huggingface, load_checkpoint, make_checkpoint
from _utils.detection import (Detection, Detector, Proposal, Word, chunk_words, combined_score, correct_word, detect,
                              format_text, generator_candidates, load_detector, match_case, propose, read_texts,
                              rescore_in_place, swap_word, to_json)
from _utils.errors import UserError
from _utils.pretraining import build_electra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
import detect_swaps  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS='1', ELECTRA_ARGS='')

SENTENCES = [  # the fixture models' whole world; the held-out sentence is made of their words
    'the cat sat on the mat and looked at the garden .',
    'a dog ran across the garden to the old house .',
    'the children played in the park after school .',
    'my mother cooked dinner in the small kitchen .',
    'the old man read a book by the window .',
    'we walked to the river on a sunny morning .',
    'the teacher wrote a long letter to the children .',
    'a bird sang in the tree near the house .',
]
HELD_OUT = 'the old dog sat by the river in the morning .'
STEPS, LR = 200, 3e-3


def tiny_config(tokenizer, positions=64):
    return ElectraConfig(vocab_size=len(tokenizer), embedding_size=32, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=positions,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def fixture_batch(tokenizer):
    """The sentences as one padded batch, and where their real tokens are (not [CLS], [SEP] or padding)."""
    batch = tokenizer(SENTENCES, padding=True, return_tensors='pt')
    ids, attention_mask = batch['input_ids'], batch['attention_mask']
    real = attention_mask.bool() & (ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)
    return ids, attention_mask, real


def train_discriminator(tokenizer):
    """Replaced-token detection against uniformly random replacements (15% of the tokens), which a tiny model learns
    in a few hundred steps: the fixture sentences' words are original, any other word is a replacement."""
    ids, attention_mask, real = fixture_batch(tokenizer)
    model = ElectraForPreTraining(tiny_config(tokenizer))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(STEPS):
        replaced = real & (torch.rand(ids.shape) < 0.15)
        disc_input = torch.where(replaced, torch.randint(999, len(tokenizer), ids.shape), ids)  # after [unused*]
        logits = model(input_ids=disc_input, attention_mask=attention_mask).logits               # (B, L)
        on = attention_mask.bool()
        loss = F.binary_cross_entropy_with_logits(logits[on], (disc_input != ids)[on].float())
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()


def train_generator(tokenizer):
    """A masked language model of the fixture sentences: 15% of the tokens masked, at least one a sentence."""
    ids, attention_mask, real = fixture_batch(tokenizer)
    model = ElectraForMaskedLM(tiny_config(tokenizer))
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for _ in range(STEPS):
        masked = real & (torch.rand(ids.shape) < 0.15)
        masked[torch.arange(len(ids)), (real.float() + torch.rand(ids.shape)).argmax(1)] = True
        hidden = model.electra(input_ids=torch.where(masked, tokenizer.mask_token_id, ids),
                               attention_mask=attention_mask).last_hidden_state[masked]          # (N, H)
        loss = F.cross_entropy(model.generator_lm_head(model.generator_predictions(hidden)), ids[masked])
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()


@pytest.fixture(scope='module')
def detector(tokenizer):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Detector(train_discriminator(tokenizer), tokenizer, train_generator(tokenizer), 'fixture models')


# ---------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_word_swapped_for_a_random_word_gets_the_highest_probability_and_is_flagged(detector, tokenizer):
    assert detect(detector, HELD_OUT).flagged == []
    for seed in range(3):
        text, index = swap_word(tokenizer, HELD_OUT, seed=seed)
        detection = detect(detector, text)
        swapped = detection.words[index]
        assert swapped.text != HELD_OUT.split()[index]
        highest_other = max(w.probability for i, w in enumerate(detection.words) if i != index)
        assert swapped.probability > 0.9 and highest_other < 0.2, (text, swapped, highest_other)
        assert detection.flagged == [index]


def test_pieces_combine_into_words_at_their_place_in_the_text_as_written(detector, tokenizer):
    text = "Héllo wörld, unbelievably [MASK] 東京 don't"
    words = detect(detector, text).words
    assert [w.text for w in words] == ['Héllo', 'wörld', ',', 'unbelievably', '[', 'MASK', ']', '東', '京', 'don',
                                       "'", 't']
    assert all(text[w.start:w.end] == w.text for w in words)
    assert tokenizer.convert_ids_to_tokens(words[3].ids) == ['un', '##bel', '##ie', '##va', '##bly']
    # a word's probability is the max over its pieces; [CLS] and [SEP] belong to no word
    encoded = tokenizer(text, return_tensors='pt', split_special_tokens=True)
    with torch.no_grad():
        pieces = torch.sigmoid(detector.discriminator(**encoded).logits[0, 1:-1]).tolist()
    assert sum(len(w.ids) for w in words) == len(pieces)
    at = 0
    for w in words:
        assert w.probability == pytest.approx(max(pieces[at:at + len(w.ids)]), abs=1e-6)
        at += len(w.ids)


def test_a_text_longer_than_the_positions_is_read_in_chunks_of_whole_words(tokenizer):
    torch.manual_seed(0)
    short = Detector(ElectraForPreTraining(tiny_config(tokenizer, positions=16)).eval(), tokenizer)
    assert short.max_pieces == 14  # 16 positions less [CLS] and [SEP]
    text = ' '.join(['unbelievably long sentences'] * 6)  # 7 pieces each time, 42 in all
    detection = detect(short, text)
    chunks = chunk_words(detection.words, short.max_pieces)
    assert len(chunks) == 3 and [i for c in chunks for i in c] == list(range(len(detection.words)))
    for chunk in chunks:  # each word gets the probability it gets in its chunk read alone
        first, last = detection.words[chunk[0]], detection.words[chunk[-1]]
        alone = detect(short, text[first.start:last.end]).words
        assert [w.probability for w in alone] == pytest.approx([detection.words[i].probability for i in chunk],
                                                               abs=1e-6)
    with pytest.raises(UserError, match='more than the model'):
        detect(short, 'qwzx' * 5)  # one word of 20 pieces: q ##w ##z ##x ...


def test_empty_text_and_missing_generator_are_one_line_errors(detector, tokenizer):
    with pytest.raises(UserError, match='the text is empty'):
        detect(detector, '  ')
    with pytest.raises(UserError, match='corrections need a generator'):
        detect(Detector(detector.discriminator, tokenizer, None, 'a discriminator'), HELD_OUT, correct=True)


def test_texts_come_from_text_separated_by_bars_or_a_file_one_a_line(tmp_path):
    assert read_texts('the chef ate the meal | a b') == ['the chef ate the meal', 'a b']
    (tmp_path / 'texts.txt').write_text('first text\n\n second | text \n', encoding='utf-8')
    assert read_texts('ignored', str(tmp_path / 'texts.txt')) == ['first text', 'second | text']
    with pytest.raises(UserError, match='--text is empty'):
        read_texts(' | ')
    with pytest.raises(UserError, match="--file '.*nope.txt' does not exist"):
        read_texts('', str(tmp_path / 'nope.txt'))


# ---------------------------------------------------------------------------------------------------------------
# Corrections
# ---------------------------------------------------------------------------------------------------------------
def test_proposals_are_the_generators_k_most_probable_whole_words_other_than_the_word(detector, tokenizer):
    text, index = swap_word(tokenizer, SENTENCES[0], index=6)  # 'and' swapped for a random word
    detection = detect(detector, text, correct=True, top_k=3)
    word = detection.words[index]
    assert detection.flagged == [index] and len(word.proposals) == 3
    vocab = tokenizer.get_vocab()
    chosen = [p.word for p in word.proposals]
    assert all(w in vocab and w.isalpha() and w != word.text for w in chosen)  # whole words, not '##', [MASK], ...
    assert [p.pieces for p in word.proposals] == [1, 1, 1]  # the fixture generator never saw a '##' piece
    # one piece: the generator's probabilities at the word re-masked as one [MASK], most probable first
    masked = tokenizer(text[:word.start] + tokenizer.mask_token + text[word.end:], return_tensors='pt')
    with torch.no_grad():
        probabilities = torch.softmax(detector.generator(**masked).logits[0, index + 1], -1)
    assert [p.probability for p in word.proposals] == pytest.approx([probabilities[vocab[w]].item() for w in chosen])
    assert chosen == sorted(chosen, key=lambda w: -probabilities[vocab[w]])
    left_out = [i for t, i in vocab.items() if t.isascii() and t.isalpha() and t not in chosen and t != word.text]
    assert probabilities[left_out].max() <= word.proposals[-1].probability
    assert 'and' in chosen  # the word swapped out, which the generator learned from the fixture sentence


def generator_probability(detector, tokenizer, text, word, pieces):
    """p of `pieces` in `word`'s place, as many [MASK]s filled left to right: the product of each piece's
    probability, the pieces before it filled in."""
    encode = lambda s: tokenizer(s, add_special_tokens=False)['input_ids']
    before, after, ids = encode(text[:word.start]), encode(text[word.end:]), tokenizer.convert_tokens_to_ids(pieces)
    p = 1.0
    for j, piece in enumerate(ids):
        sequence = [tokenizer.cls_token_id, *before, *ids[:j], *[tokenizer.mask_token_id] * (len(ids) - j), *after,
                    tokenizer.sep_token_id]
        with torch.no_grad():
            logits = detector.generator(input_ids=torch.tensor([sequence])).logits[0, 1 + len(before) + j]
        p *= torch.softmax(logits, -1)[piece].item()
    return p


def test_a_word_of_two_pieces_is_proposed_when_the_generator_prefers_it(detector, tokenizer):
    """The generator made to prefer 'riverbank' (river ##bank) by its output biases: with the word re-masked as two
    [MASK]s it is proposed, scored by the product of its pieces' probabilities; one [MASK] could never hold it."""
    assert tokenizer.tokenize('riverbank') == ['river', '##bank'] and 'riverbank' not in tokenizer.get_vocab()
    biased = copy.copy(detector)
    biased.generator = copy.deepcopy(detector.generator)
    with torch.no_grad():
        bias = biased.generator.generator_lm_head.bias
        bias[tokenizer.convert_tokens_to_ids(['river', '##bank'])] += 20.0
    detection = detect(biased, HELD_OUT)
    river = detection.words[6]
    assert river.text == 'river'
    proposals = propose(biased, detection, 6, top_k=3)  # 'river' itself is never proposed
    assert (proposals[0].word, proposals[0].pieces) == ('riverbank', 2)
    assert proposals[0].probability == pytest.approx(
        generator_probability(biased, tokenizer, HELD_OUT, river, ['river', '##bank']), rel=1e-4)
    # for another word, 'river' (one piece) and 'riverbank' (two) are the first two
    assert [(p.word, p.pieces) for p in propose(biased, detection, 3, top_k=2)] == [('river', 1), ('riverbank', 2)]


def test_a_word_of_several_pieces_is_re_masked_as_one_to_three_masks(detector, tokenizer):
    """'unbelievably' (5 pieces) is re-masked as 1, 2 and 3 [MASK]s; a word of 1 piece as 1 and 2. Its own
    probability is its 5 pieces', each filled in left to right."""
    text = 'the cat sat unbelievably on the mat .'
    detection = detect(detector, text)
    masks = []
    hook = detector.generator.electra.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append((kwargs['input_ids'][0] == tokenizer.mask_token_id).sum().item()),
        with_kwargs=True)
    try:
        found, own = generator_candidates(detector, detection, 3)
        assert {p.pieces for p in found} <= {1, 2, 3}
        assert sorted(set(masks[:-1])) == [1, 2, 3] and masks[-1] == 5  # the candidates, then the word itself
        masks.clear()
        generator_candidates(detector, detection, 2)  # 'sat'
        assert sorted(set(masks[:-1])) == [1, 2] and masks[-1] == 1
    finally:
        hook.remove()
    pieces = tokenizer.tokenize('unbelievably')
    assert math.exp(own) == pytest.approx(generator_probability(detector, tokenizer, text, detection.words[3],
                                                                pieces), rel=1e-3)


def test_a_flagged_word_the_generator_ranks_in_its_first_k_is_kept(detector, tokenizer):
    """pycorrector's rule: a flagged word the generator ranks among its `keep_top` (5) most probable is left as
    written. Threshold 0 flags every word: the fixture sentence's own words are among the generator's first five
    (ranks 1 to 4), the word swapped in is not."""
    text, index = swap_word(tokenizer, SENTENCES[0], index=6)  # 'and' swapped for a random word
    detection = detect(detector, text, threshold=0, correct=True)
    words = detection.words
    assert [w.kept for w in words] == [i != index for i in range(len(words))]
    assert words[index].generator_rank > 5
    for i, w in enumerate(words):  # the rank: 1 + the candidates more probable than the word itself
        found = correct_word(detector, detection, i)
        assert w.generator_rank == 1 + sum(p.probability > w.generator_probability for p in found)
    assert words[2].text == 'sat' and words[2].generator_probability == pytest.approx(
        generator_probability(detector, tokenizer, text, words[2], ['sat']), rel=1e-4)
    first_only = detect(detector, text, threshold=0, correct=True, keep_top=1).words
    assert [w.kept for w in first_only] == [w.generator_rank == 1 for w in words]
    assert not any(w.kept for w in detect(detector, text, threshold=0, correct=True, keep_top=0).words)


def test_the_corrected_text_replaces_each_flagged_word_not_kept_by_its_first_proposal(detector, tokenizer):
    text, index = swap_word(tokenizer, SENTENCES[0], index=6)
    detection = detect(detector, text, correct=True)
    assert detection.flagged == [index] and detection.words[index].proposals[0].word == 'and'
    assert detection.corrected == SENTENCES[0]
    assert detect(detector, text).corrected == text  # no corrections asked: nothing to replace
    # as written: case matched, kept and unflagged words untouched
    words = [Word('Their', 0, 5, [1], 0.9, True, [Proposal('there', 0.3)], kept=False),
             Word('NASA', 6, 10, [2], 0.9, True, [Proposal('nasa', 0.3), Proposal('x', 0.1)], kept=False),
             Word('sat', 11, 14, [3], 0.9, True, [Proposal('sit', 0.3)], kept=True),
             Word('here', 15, 19, [4], 0.1, False, [Proposal('hear', 0.3)])]
    assert Detection('Their NASA sat here', words, correct=True).corrected == 'There NASA sat here'
    assert match_case('there', 'THEIR') == 'THERE' and match_case('there', 'a') == 'there'


def test_rescore_ranks_the_proposals_by_generator_and_discriminator_together(detector, tokenizer):
    """--rescore: the generator's 2·top_k best, put in the word's place, ranked by log p_generator + log(1 -
    P(replaced) there), highest first."""
    text, index = swap_word(tokenizer, SENTENCES[1], index=2)  # 'ran' swapped for a random word
    detection = detect(detector, text)
    pool = propose(detector, detection, index, top_k=8)
    rescored = propose(detector, detection, index, top_k=4, rescore=True)
    assert {p.word for p in rescored} <= {p.word for p in pool}
    scores = [math.log(p.probability) + math.log(1 - p.replaced_probability) for p in rescored]
    assert scores == sorted(scores, reverse=True) and scores == pytest.approx([combined_score(p) for p in rescored])
    by_score = sorted(pool, key=lambda p: -combined_score(rescore_in_place(detector, detection, index, [p])[0]))
    assert [p.word for p in rescored] == [p.word for p in by_score[:4]]
    for p in rescored:  # the probability the word itself gets, put in the text
        in_place = detect(detector, swap_word(tokenizer, text, index, p.word)[0]).words[index].probability
        assert p.replaced_probability == pytest.approx(in_place, abs=1e-6)


def test_text_and_json_outputs(detector, tokenizer):
    text, index = swap_word(tokenizer, HELD_OUT, index=2)
    detection = detect(detector, text, correct=True, top_k=2)
    word = detection.words[index]
    lines = format_text(detection).splitlines()
    assert lines[0] == text[:word.start] + f'⟦{word.text}⟧({word.probability:.2f})' + text[word.end:]
    assert lines[1].startswith(f'    {word.text} (rank {word.generator_rank}, ')
    assert f') → {word.proposals[0].word} (' in lines[1]
    assert lines[-1] == f'  corrected: {detection.corrected}' and detection.corrected != text
    parsed = json.loads(to_json(detection))
    assert parsed['text'] == text and parsed['flagged'] == [index] and parsed['corrected'] == detection.corrected
    assert [w['word'] for w in parsed['words']] == [w.text for w in detection.words]
    flagged = parsed['words'][index]
    assert [p['word'] for p in flagged['proposals']] == [p.word for p in word.proposals]
    assert (flagged['generator_rank'], flagged['kept']) == (word.generator_rank, word.kept)
    assert 'corrected' not in json.loads(to_json(detect(detector, text)))


# ---------------------------------------------------------------------------------------------------------------
# The benchmark's errors (bench/detect_swaps.py)
# ---------------------------------------------------------------------------------------------------------------
def test_confusable_errors_swap_a_word_for_its_partner_in_its_case(tokenizer):
    assert len(detect_swaps.CONFUSABLES.split('|')) >= 50
    assert {'there'} <= set(detect_swaps.CONFUSED['their']) and 'than' in detect_swaps.CONFUSED['then']
    sentence = 'Their house is bigger than ours .'
    made = {detect_swaps.confusable_error(tokenizer, sentence, random.Random(seed), seed) for seed in range(20)}
    assert made == {('There house is bigger than ours .', 0), ('Their house is bigger then ours .', 4),
                    ('Their house is bigger that ours .', 4)}
    assert detect_swaps.confusable_error(tokenizer, 'cats sleep all day', random.Random(0), 0) is None


def test_inflection_errors_are_other_forms_of_the_word():
    assert {'walk', 'walks', 'walking'} <= set(detect_swaps.inflections('walked'))
    assert {'are', 'was', 'be'} <= set(detect_swaps.inflections('is'))
    assert {'study', 'studied'} <= set(detect_swaps.inflections('studies'))
    assert 'children' in detect_swaps.inflections('child') and 'ne' not in detect_swaps.inflections('need')
    assert detect_swaps.inflections('qwzx') == []


def test_inflection_error_swaps_a_lower_case_word(tokenizer):
    for seed in range(10):
        text, index = detect_swaps.inflection_error(tokenizer, 'Paris walked to the river .', random.Random(seed), seed)
        original, wrong = 'Paris walked to the river .'.split()[index], text.split()[index]
        assert original != 'Paris' and wrong in detect_swaps.inflections(original)


def test_typos_are_one_letter_inserted_deleted_or_two_neighbours_swapped(tokenizer):
    def one_edit(a, b):
        if len(a) == len(b):
            diff = [i for i in range(len(a)) if a[i] != b[i]]
            return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        short, long = sorted((a, b), key=len)
        return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))
    rng = random.Random(0)
    for word in ['river', 'morning', 'The', 'cat'] * 10:
        made = detect_swaps.typo(word, rng)
        assert made.lower() != word.lower() and one_edit(word.lower(), made.lower()), (word, made)
        assert made[0].isupper() == word[0].isupper()
    text, index = detect_swaps.typo_error(tokenizer, HELD_OUT, random.Random(0), 0)
    assert len(text.split()) == len(HELD_OUT.split()) and len(HELD_OUT.split()[index]) >= 3


def test_the_benchmark_reads_a_wrong_word_and_the_clean_sentence(detector, tokenizer):
    text, index = swap_word(tokenizer, SENTENCES[0], index=6)
    wrong = detect_swaps.read(detector, SENTENCES[0], text, index, 'random')
    assert (wrong['original'], wrong['found'], wrong['flagged'], wrong['kept']) == ('and', True, True, False)
    assert wrong['restored_at_5'] and wrong['fixed'] and wrong['corrected'] == SENTENCES[0]
    clean = detect_swaps.read(detector, HELD_OUT, HELD_OUT, None, 'clean')
    assert (clean['flagged_words'], clean['fixed']) == (0, True)  # no false flag: the sentence is left as it is
    table = detect_swaps.table([wrong, clean]).splitlines()
    assert table[2].startswith('| random | 1 | 100.0% (') and table[3].startswith('| none (clean) | 1 |')


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
def save_checkpoint(tokenizer, path, **build):
    torch.manual_seed(0)
    electra = build_electra('tiny', tokenizer, **build).eval()
    torch.save(make_checkpoint(electra, tokenizer, {}, step=0, total_steps=1, with_rng=False), path)
    return electra


def test_a_text_longer_than_the_trained_length_is_read_in_windows_of_at_most_that_length(tokenizer, tmp_path):
    """Pretrained at 24 tokens, the model has 512 positions, but those past 24 never got a gradient: a long text is
    read in windows of at most 24 ([CLS] + 22 pieces + [SEP])."""
    torch.manual_seed(0)
    electra = build_electra('tiny', tokenizer, max_length=24).eval()
    torch.save(make_checkpoint(electra, tokenizer, {'max_length': 24}, step=0, total_steps=1, with_rng=False),
               tmp_path / 'short.pth')
    detector = load_detector(str(tmp_path / 'short.pth'))
    assert detector.discriminator.config.max_position_embeddings == 512 and detector.max_pieces == 22
    shapes = []
    hook = detector.discriminator.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs.get('input_ids', args[0] if args else None).shape)),
        with_kwargs=True)
    detection = detect(detector, ' '.join(['the cat sat on the mat'] * 12))  # 72 pieces
    hook.remove()
    assert len(detection.words) == 72 and sum(rows for rows, _ in shapes) == 4  # 22 + 22 + 22 + 6 pieces
    assert max(length for _, length in shapes) == 24


def test_a_checkpoint_without_a_discriminator_head_is_refused(tokenizer, tmp_path):
    save_checkpoint(tokenizer, tmp_path / 'mlm.pth', objective='mlm')
    with pytest.raises(UserError, match='--objective mlm, which has no discriminator head'):
        load_detector(str(tmp_path / 'mlm.pth'))


def test_a_checkpoint_or_folder_that_does_not_exist_is_refused(tmp_path):
    for missing in (tmp_path / 'nope.pth', tmp_path / 'exported' / 'nope'):
        with pytest.raises(UserError, match=f"--model '{missing}' does not exist; give --model latest"):
            load_detector(str(missing))


def test_a_tupe_checkpoint_detects_with_its_own_positions(tokenizer, tmp_path):
    electra = save_checkpoint(tokenizer, tmp_path / 'tupe.pth', position='tupe-r')
    detection = detect(load_detector(str(tmp_path / 'tupe.pth')), 'the chef ate the meal')
    with torch.no_grad():
        expected = torch.sigmoid(electra.discriminator(**tokenizer('the chef ate the meal', return_tensors='pt')
                                                       ).logits[0, 1:-1])
    assert [w.probability for w in detection.words] == pytest.approx(expected.tolist(), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# detect.py and its notebook
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def saved(tokenizer, tmp_path_factory):
    """A tiny untrained checkpoint and its Hugging Face export (discriminator/ and generator/)."""
    root = tmp_path_factory.mktemp('detect')
    save_checkpoint(tokenizer, root / 'tiny.pth')
    export_huggingface(load_checkpoint(root / 'tiny.pth'), root / 'hf')
    return root


def run_detect(*args):
    return subprocess.run([sys.executable, 'detect.py', *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=ENV)


def run_all(commands):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda args: run_detect(*args), commands))


@pytest.mark.slow
def test_detect_py_bad_input_is_one_line_on_stderr(saved):
    cases = {
        '--text is empty': ['--model', saved / 'tiny.pth', '--text', ''],
        "--file '.*missing.txt' does not exist": ['--model', saved / 'tiny.pth', '--file', saved / 'missing.txt'],
        'corrections need a generator': ['--model', saved / 'hf' / 'discriminator', '--correct'],
        '--keep_top must be 0 or more, got -1': ['--model', saved / 'tiny.pth', '--keep_top', '-1'],
    }
    for (problem, _), res in zip(cases.items(), run_all(cases.values())):
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
        assert lines[0].startswith('error: ') and re.search(problem, lines[0]), lines[0]


@pytest.mark.slow
def test_detect_py_gives_the_same_jsonl_from_a_checkpoint_and_its_hugging_face_export(saved):
    texts = 'the chef ate the meal | Unbelievably, the river ran dry.'
    common = ['--text', texts, '--format', 'jsonl', '--threshold', '0', '--correct', '--top_k', '2']
    from_checkpoint, from_folder = run_all([['--model', saved / 'tiny.pth', *common],
                                            ['--model', saved / 'hf', *common]])
    for res in (from_checkpoint, from_folder): assert res.returncode == 0, res.stderr[-2000:]
    a, b = ([json.loads(line) for line in res.stdout.splitlines()] for res in (from_checkpoint, from_folder))
    assert [d['text'] for d in a] == [d['text'] for d in b] == ['the chef ate the meal',
                                                                'Unbelievably, the river ran dry.']
    for da, db in zip(a, b):
        assert [(w['word'], w['start'], w['end']) for w in da['words']] == \
               [(w['word'], w['start'], w['end']) for w in db['words']]
        assert [w['probability'] for w in da['words']] == pytest.approx([w['probability'] for w in db['words']],
                                                                        abs=1e-5)
        assert da['flagged'] == list(range(len(da['words'])))  # threshold 0: every word, with 2 proposals each
        assert all(len(w['proposals']) == 2 for w in da['words'] + db['words'])
        assert [[p['word'] for p in w['proposals']] for w in da['words']] == \
               [[p['word'] for p in w['proposals']] for w in db['words']]
        assert [w['generator_rank'] for w in da['words']] == [w['generator_rank'] for w in db['words']]
        assert da['corrected'] == db['corrected']


@pytest.mark.slow
def test_detect_py_correct_prints_each_flagged_words_rank_and_proposals_and_the_corrected_text(saved):
    common = ['--model', saved / 'tiny.pth', '--text', 'the chef ate the meal', '--threshold', '0', '--top_k', '2']
    never_kept, all_kept = run_all([[*common, '--correct', '--rescore', '--keep_top', '0'],
                                    [*common, '--correct', '--keep_top', '1000000', '--format', 'jsonl']])
    for res in (never_kept, all_kept): assert res.returncode == 0, res.stderr[-2000:]
    lines = never_kept.stdout.splitlines()
    word_lines = [line for line in lines if ' → ' in line]
    assert len(word_lines) == 5 and all(re.match(r'    \S+ \(rank \d+, [\d.e-]+\) → \S+ \([\d.e-]+/[\d.]+\), ', line)
                                        for line in word_lines), word_lines  # rescored: P(replaced) after a slash
    corrected = lines[-1].removeprefix('  corrected: ')
    assert lines[-1].startswith('  corrected: ') and len(corrected.split()) == 5  # every word replaced
    assert [line.split()[0] for line in word_lines] == 'the chef ate the meal'.split()
    kept = json.loads(all_kept.stdout)
    assert all(w['kept'] for w in kept['words']) and kept['corrected'] == 'the chef ate the meal'


@pytest.mark.slow
def test_the_benchmark_runs_every_kind_of_error(saved, tmp_path):
    (tmp_path / 'sentences.txt').write_text('The river ran dry in the summer of that year .\n' * 2, encoding='utf-8')
    res = subprocess.run([sys.executable, 'bench/detect_swaps.py', '--model', saved / 'tiny.pth', '--sentences',
                          tmp_path / 'sentences.txt', '--n', '1', '--out', tmp_path / 'out.jsonl'], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line.split('|')[1].strip() for line in res.stdout.splitlines() if line.startswith('| ')]
    assert rows == ['error', 'random', 'confusable', 'inflection', 'typo', 'none (clean)']
    records = [json.loads(line) for line in (tmp_path / 'out.jsonl').read_text().splitlines()]
    assert [r['kind'] for r in records] == ['clean', 'random', 'confusable', 'inflection', 'typo']


@pytest.mark.slow
def test_the_notebook_runs_and_draws(saved):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(str(ROOT / 'Detect_and_Correct.ipynb'), as_version=4)
    os.environ['ELECTRA_ARGS'] = f"--model {saved / 'tiny.pth'} --correct"
    try:
        NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(ROOT)}}).execute()
    finally:
        os.environ.pop('ELECTRA_ARGS')
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
    text = '\n'.join(o.get('text', '') for o in outputs)
    assert 'the swapped word' in text and '→' in text
    assert sum('image/png' in o.get('data', {}) for o in outputs) == 2  # the texts and the worked example
