#!/usr/bin/env python
"""How well a pretrained ELECTRA finds and fixes one wrong word. In each held-out sentence one word of letters is
made wrong, in turn by each kind of error (`ERRORS`):
    random      swapped for a random whole word of the vocabulary (`detection.swap_word`; foreign scripts too)
    confusable  swapped for a word it is commonly confused with (their/there, then/than, affect/effect, ...)
    inflection  another form of the same word (is/are, was/were, walk/walks/walked/walking, child/children, ...)
    typo        one letter inserted or deleted, or two neighbouring letters swapped
and the sentence is also read as it is (`clean`). Per kind:
    found       the wrong word gets the highest P(replaced) of its sentence (chance: 1 / words in the sentence)
    flagged     the wrong word is above the threshold (0.5)
    kept        the generator ranks the wrong word in its first five: the keep rule would leave it (lower is better)
    restored@1  the first proposal for the wrong word is the original word (its pieces re-masked as 1 to 3 [MASK]s,
                `detection.generator_candidates`); restored@5: among the first five
    fixed       the corrected text (every flagged word not kept replaced by its first proposal) is the original
                sentence, up to case and accents
each in the generator's order and in --rescore's (log p_generator + log(1 - P(replaced) in place), over the
generator's 10 best); restored also by P(replaced) in place alone, lowest first (--rescore's order before issue 23),
from the candidates of one piece alone (one [MASK], as before issue 23) and ranked by the mean log-probability per
piece instead of the sum (a length normalisation).
For the clean sentences: the share of their words flagged (false flags), the share of those the keep rule keeps,
and the share of sentences the corrected text leaves as they were. Prints a Markdown table; --out writes one JSON
line per sentence and kind.

Held-out sentences: a text file (one sentence per line) or 'qnli:<glue dir>', the Wikipedia sentences of QNLI's
dev set (from SQuAD); with --exclude_corpus, any sentence found verbatim in the pretraining corpus is dropped.

    python bench/detect_swaps.py --model checkpoints/pretrain/demo_seed0_100pct.pth \
        --sentences qnli:../shared/data/glue --exclude_corpus ../shared/data/corpus/enwiki2015 --n 200
"""
import argparse
import csv
import json
import math
import random
import statistics
import sys
import time
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _utils.detection import (KEEP_TOP, THRESHOLD, correct_word, detect, load_detector, match_case,  # noqa: E402
                              swap_word, words_of)

# ---------------------------------------------------------------------------------------------------------------
# The errors
# ---------------------------------------------------------------------------------------------------------------
# Words commonly written for one another, each pair both ways. One word each: BERT's pre-tokenizer splits "it's"
# into three words (it ' s), which a one-word correction cannot undo, so apostrophes are left out.
CONFUSABLES = '''their there | then than | to too | a an | of off | in on | affect effect | accept except
    | advice advise | lose loose | quite quiet | principal principle | weather whether | were where | who whom
    | its it | from form | by buy | past passed | lead led | break brake | complement compliment | council counsel
    | desert dessert | ensure insure | farther further | fewer less | later latter | lay lie | personal personnel
    | precede proceed | site sight | cite site | through thorough | though through | though thought | role roll
    | peace piece | capital capitol | weak week | new knew | no know | right write | hear here | for four
    | among between | many much | choose chose | moral morale | allowed aloud | and an | as has | than that
    | discreet discrete | eminent imminent | adverse averse | breath breathe | formally formerly | raise rise
    | precedent president | device devise | conscience conscious | which that'''
# Forms the suffix rules below cannot make: agreement and irregular verbs and plurals.
IRREGULAR_FORMS = '''is are | was were | has have | does do | this these | that those | is was | are were | has had
    | man men | woman women | child children | person people | foot feet | tooth teeth | mouse mice
    | go went | went gone | take took | took taken | give gave | gave given | know knew | knew known | see saw
    | saw seen | begin began | began begun | write wrote | wrote written | become became | come came | run ran
    | bring brought | build built | hold held | lose lost | teach taught | think thought | choose chose
    | chose chosen | speak spoke | spoke spoken | fall fell | fell fallen | rise rose | rose risen | grow grew
    | grew grown | drive drove | drove driven | is be | are be | was been | were been'''


def pairs_both_ways(table):
    partners = {}
    for pair in table.split('|'):
        a, b = pair.split()
        partners.setdefault(a, []).append(b)
        partners.setdefault(b, []).append(a)
    return partners


CONFUSED, IRREGULAR = pairs_both_ways(CONFUSABLES), pairs_both_ways(IRREGULAR_FORMS)


@cache
def english_words():
    """The bundled BERT uncased vocabulary's whole words of letters (about 21,000): what counts as a word when an
    inflection is made by rule, whatever the model's own (smaller) vocabulary."""
    from _utils.text import load_tokenizer
    return frozenset(t for t in load_tokenizer('bundled').get_vocab() if t.isalpha() and t.isascii())


def inflections(word):
    """Other forms of `word` (lower case): its irregular forms, and what the regular suffixes (-s, -es, -ies, -ed,
    -ied, -ing) make of its stem, where that is an English word (`english_words`)."""
    stems = {word}
    for suffix, stem_ending in (('ies', 'y'), ('es', ''), ('s', ''), ('ied', 'y'), ('ed', ''), ('ed', 'e'),
                                ('ing', ''), ('ing', 'e')):
        stem = word[:-len(suffix)] + stem_ending
        if word.endswith(suffix) and not word.endswith('ss') and len(stem) >= 4: stems.add(stem)  # not "need" -> "ne"
    forms = set(IRREGULAR.get(word, []))
    for stem in stems:
        forms |= {stem, stem + 's', stem + 'es', stem + 'ed', stem + 'ing'}
        if stem.endswith('e'): forms |= {stem + 'd', stem[:-1] + 'ing'}
        if stem.endswith('y'): forms |= {stem[:-1] + 'ies', stem[:-1] + 'ied'}
    return sorted(f for f in forms if f != word and (f in english_words() or f in IRREGULAR.get(word, [])))


def typo(word, rng):
    """`word` with one letter inserted (not before the first), one deleted, or two different neighbours swapped,
    in its case."""
    lower = word.lower()
    while True:
        edit, at = rng.choice(['insert', 'delete', 'swap']), rng.randrange(len(lower))
        if edit == 'insert': made = lower[:at + 1] + rng.choice('abcdefghijklmnopqrstuvwxyz') + lower[at + 1:]
        elif edit == 'delete': made = lower[:at] + lower[at + 1:]
        elif at + 1 < len(lower): made = lower[:at] + lower[at + 1] + lower[at] + lower[at + 2:]
        else: continue
        if made != lower: return match_case(made, word)


def random_error(tokenizer, sentence, rng, seed):
    return swap_word(tokenizer, sentence, seed=seed)  # the same swaps as this benchmark made before (issue 13)


def confusable_error(tokenizer, sentence, rng, seed):
    """A word of the sentence that has a confusable partner swapped for it: a pair chosen evenly among those in the
    sentence (else `in`, `of` and `a` would be most of them), then an occurrence and a partner."""
    words = words_of(tokenizer, sentence)
    places = {}
    for i, w in enumerate(words):
        if w.text.lower() in CONFUSED: places.setdefault(w.text.lower(), []).append(i)
    if not places: return None
    word = rng.choice(sorted(places))
    index = rng.choice(places[word])
    return swap_word(tokenizer, sentence, index, match_case(rng.choice(CONFUSED[word]), words[index].text))


def inflection_error(tokenizer, sentence, rng, seed):
    """A lower-case word of the sentence that has another form swapped for it."""
    words = words_of(tokenizer, sentence)
    forms = {i: inflections(w.text) for i, w in enumerate(words) if w.text.isalpha() and w.text.islower()}
    forms = {i: f for i, f in forms.items() if f}
    if not forms: return None
    index = rng.choice(sorted(forms))
    return swap_word(tokenizer, sentence, index, rng.choice(forms[index]))


def typo_error(tokenizer, sentence, rng, seed):
    """A word of three letters or more with a typo (`typo`)."""
    words = words_of(tokenizer, sentence)
    letters = [i for i, w in enumerate(words) if w.text.isalpha() and w.text.isascii() and len(w.text) >= 3]
    if not letters: return None
    index = rng.choice(letters)
    return swap_word(tokenizer, sentence, index, typo(words[index].text, rng))


ERRORS = {  # a kind of error: (tokenizer, sentence, rng, seed) -> (text, index of the wrong word), or None
    'random': random_error, 'confusable': confusable_error, 'inflection': inflection_error, 'typo': typo_error}


# ---------------------------------------------------------------------------------------------------------------
# Reading a sentence
# ---------------------------------------------------------------------------------------------------------------
def held_out_sentences(source, exclude_corpus=None, min_words=8, max_words=40):
    if source.startswith('qnli:'):
        with open(Path(source[5:]) / 'QNLI' / 'dev.tsv', encoding='utf-8') as f:
            rows = csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
            sentences = list(dict.fromkeys(row['sentence'].strip() for row in rows))  # unique, in order
    else:
        sentences = [line.strip() for line in open(source, encoding='utf-8') if line.strip()]
    sentences = [s for s in sentences if min_words <= len(s.split()) <= max_words]
    if exclude_corpus:
        corpus = ' '.join(p.read_text(encoding='utf-8') for p in sorted(Path(exclude_corpus).glob('*.txt')))
        sentences = [s for s in sentences if s[:80] not in corpus]
    return sentences


def read(detector, sentence, text, index, kind, keep_top=KEEP_TOP, top_k=5):
    """One record: `text` (`sentence` with word `index` made wrong; None for the clean sentence) detected, every
    flagged word and the wrong one corrected (`correct_word`, rescored too: both orders come from one search)."""
    detection = detect(detector, text)
    words, flagged = detection.words, detection.flagged
    by_generator, rescored, by_discriminator = {}, {}, {}
    for i in sorted(set(flagged) | ({index} if index is not None else set())):
        found = correct_word(detector, detection, i, top_k, rescore=True, keep_top=keep_top)
        by_generator[i], rescored[i] = found[:top_k], words[i].proposals
        pool = [p for p in found if p.replaced_probability is not None]  # the ones rescored
        by_discriminator[i] = sorted(pool, key=lambda p: p.replaced_probability)[:top_k]
        if i == index:
            one_mask = [p for p in found if p.pieces == 1][:top_k]
            per_piece = sorted(found, key=lambda p: -math.log(max(p.probability, 1e-300)) / p.pieces)[:top_k]
    corrected = {}
    for order, proposals in (('generator', by_generator), ('rescored', rescored)):
        for i in flagged: words[i].proposals = proposals[i]
        corrected[order] = detection.corrected
    same = lambda a, b: normalize(detector, a) == normalize(detector, b)
    record = dict(kind=kind, text=text, words=len(words), flagged_words=len(flagged),
                  kept_words=sum(bool(words[i].kept) for i in flagged),
                  fixed=same(corrected['generator'], sentence), fixed_rescored=same(corrected['rescored'], sentence),
                  corrected=corrected['generator'], corrected_rescored=corrected['rescored'])
    if index is None: return record
    original = words_of(detector.tokenizer, sentence)[index]
    wrong, spelled = words[index], detector.tokenizer.decode(original.ids).strip()
    probabilities = [w.probability for w in words]
    restored = lambda proposals, k: spelled in [p.word for p in proposals[:k]]
    return dict(record, index=index, original=original.text, original_pieces=len(original.ids), wrong=wrong.text,
                probability=wrong.probability, found=max(probabilities) == wrong.probability, flagged=wrong.flagged,
                generator_rank=wrong.generator_rank, kept=wrong.kept,
                proposals=[p.word for p in by_generator[index]], rescored=[p.word for p in rescored[index]],
                restored=restored(by_generator[index], 1), restored_at_5=restored(by_generator[index], 5),
                restored_rescored=restored(rescored[index], 1), restored_at_5_rescored=restored(rescored[index], 5),
                restored_discriminator=restored(by_discriminator[index], 1),
                restored_at_5_discriminator=restored(by_discriminator[index], 5),
                restored_one_mask=restored(one_mask, 1), restored_at_5_one_mask=restored(one_mask, 5),
                restored_per_piece=restored(per_piece, 1), restored_at_5_per_piece=restored(per_piece, 5))


def normalize(detector, text):
    """As the tokenizer reads it (BERT uncased: lower case, no accents)."""
    normalizer = detector.tokenizer.backend_tokenizer.normalizer
    return normalizer.normalize_str(text) if normalizer else text


def table(records):
    """The Markdown table: a row per kind of error, then the clean sentences."""
    share = lambda rows, key: f'{sum(bool(r[key]) for r in rows) / len(rows):.1%}'
    both = lambda rows, key: f"{share(rows, 'restored' + key)} / {share(rows, 'restored_at_5' + key)}"
    lines = ['| error | sentences | found (chance) | flagged | kept | restored@1 / @5 | restored@1 / @5, --rescore | '
             'restored@1 / @5, P(replaced) alone | restored@1 / @5, one [MASK] | restored@1 / @5, mean per piece | '
             'fixed | fixed, --rescore |', '|---' + '|---:' * 11 + '|']
    for kind in ERRORS:
        rows = [r for r in records if r['kind'] == kind]
        if not rows: continue
        chance = statistics.fmean(1 / r['words'] for r in rows)
        lines.append(f"| {kind} | {len(rows)} | {share(rows, 'found')} ({chance:.1%}) | {share(rows, 'flagged')} | "
                     f"{share(rows, 'kept')} | {both(rows, '')} | {both(rows, '_rescored')} | "
                     f"{both(rows, '_discriminator')} | {both(rows, '_one_mask')} | {both(rows, '_per_piece')} | "
                     f"{share(rows, 'fixed')} | {share(rows, 'fixed_rescored')} |")
    clean = [r for r in records if r['kind'] == 'clean']
    flagged = sum(r['flagged_words'] for r in clean)
    lines.append(f"| none (clean) | {len(clean)} | | {flagged / sum(r['words'] for r in clean):.1%} of words | "
                 f"{sum(r['kept_words'] for r in clean) / max(flagged, 1):.1%} of those | | | | | | "
                 f"{share(clean, 'fixed')} unchanged | {share(clean, 'fixed_rescored')} unchanged |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='a checkpoint of pretrain.py or a Hugging Face folder (detect.py)')
    p.add_argument('--sentences', required=True, help="a text file, one sentence per line, or 'qnli:<glue dir>'")
    p.add_argument('--exclude_corpus', default='', help='drop sentences found verbatim in this folder of .txt files')
    p.add_argument('--n', type=int, default=200, help='sentences to test (a seeded random choice)')
    p.add_argument('--errors', default=','.join(ERRORS), help=f"kinds of error, of {', '.join(ERRORS)}")
    p.add_argument('--keep_top', type=int, default=KEEP_TOP, help='the keep rule: the generator ranks the word in '
                   'its first K')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='', help='one JSON line per sentence and kind of error')
    args = p.parse_args()
    kinds = [k.strip() for k in args.errors.split(',') if k.strip()]
    if unknown := [k for k in kinds if k not in ERRORS]: p.error(f"unknown --errors {unknown}; give {list(ERRORS)}")

    started = time.time()
    detector = load_detector(args.model, need_generator=True)
    sentences = held_out_sentences(args.sentences, args.exclude_corpus)
    random.Random(args.seed).shuffle(sentences)
    sentences = sentences[:args.n]
    records = []
    for i, sentence in enumerate(sentences):
        seed = args.seed * 1_000_003 + i
        rng = random.Random(seed)
        records.append(read(detector, sentence, sentence, None, 'clean', args.keep_top))
        for kind in kinds:
            made = ERRORS[kind](detector.tokenizer, sentence, rng, seed)
            if made: records.append(read(detector, sentence, *made, kind, args.keep_top))
    if args.out:
        Path(args.out).write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records))
    print(f'{detector.source}: {len(sentences)} held-out sentences, threshold {THRESHOLD}, keep rule: rank <= '
          f'{args.keep_top}, {time.time() - started:.0f} s')
    print(table(records))
    long = [r for r in records if r['kind'] != 'clean' and r['original_pieces'] > 1]
    if long:
        print(f"originals of 2 pieces or more: {len(long)} of {sum(r['kind'] != 'clean' for r in records)}; "
              f"restored@5 among them {sum(r['restored_at_5'] for r in long) / len(long):.1%} "
              f"(one [MASK] could never propose them)")


if __name__ == '__main__':
    main()
