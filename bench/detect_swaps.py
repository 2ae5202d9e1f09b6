#!/usr/bin/env python
"""How well a pretrained ELECTRA finds and fixes one swapped word: on held-out sentences, one word of letters is
swapped for a random whole word of the vocabulary (`detection.swap_word`); then
    found     the swapped word gets the highest P(replaced) of its sentence (chance: 1 / words in the sentence)
    flagged   the swapped word is above the threshold (0.5)
    restored  the generator's first proposal for the swapped word is the original word (its pieces re-masked)
    restored@5  the original is among the first five proposals
Prints the fractions and writes one JSON line per sentence with --out.

Held-out sentences: a text file (one sentence per line) or 'qnli:<glue dir>', the Wikipedia sentences of QNLI's
dev set (from SQuAD); with --exclude_corpus, any sentence found verbatim in the pretraining corpus is dropped.

    python bench/detect_swaps.py --model checkpoints/pretrain/run_seed0_100pct.pth \
        --sentences qnli:../shared/data/glue --exclude_corpus ../shared/data/corpus/enwiki2015 --n 500
"""
import argparse
import csv
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _utils.detection import detect, load_detector, propose, swap_word, words_of  # noqa: E402


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='a checkpoint of pretrain.py or a Hugging Face folder (detect.py)')
    p.add_argument('--sentences', required=True, help="a text file, one sentence per line, or 'qnli:<glue dir>'")
    p.add_argument('--exclude_corpus', default='', help='drop sentences found verbatim in this folder of .txt files')
    p.add_argument('--n', type=int, default=500, help='sentences to test (a seeded random choice)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='', help='one JSON line per sentence')
    args = p.parse_args()

    detector = load_detector(args.model, need_generator=True)
    sentences = held_out_sentences(args.sentences, args.exclude_corpus)
    random.Random(args.seed).shuffle(sentences)
    sentences = sentences[:args.n]
    records = []
    for i, sentence in enumerate(sentences):
        swapped, index = swap_word(detector.tokenizer, sentence, seed=args.seed * 1_000_003 + i)
        original = detector.tokenizer.decode(words_of(detector.tokenizer, sentence)[index].ids).strip()
        detection = detect(detector, swapped)
        probabilities = [w.probability for w in detection.words]
        proposals = [q.word for q in propose(detector, detection, index, top_k=5)]
        records.append(dict(text=swapped, original=original, swapped=detection.words[index].text, index=index,
                            words=len(probabilities), found=max(probabilities) == probabilities[index],
                            flagged=detection.words[index].flagged, probability=probabilities[index],
                            proposals=proposals, restored=proposals[:1] == [original],
                            restored_at_5=original in proposals))
    if args.out:
        Path(args.out).write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records))
    share = lambda key: sum(r[key] for r in records) / len(records)
    chance = statistics.fmean(1 / r['words'] for r in records)
    print(f'{detector.source}: {len(records)} held-out sentences, one word swapped for a random vocabulary word')
    print(f"  found (highest P(replaced) of its sentence): {share('found'):.1%}   (chance {chance:.1%})")
    print(f"  flagged (P > 0.5): {share('flagged'):.1%}; median P(replaced) of the swapped word "
          f"{statistics.median(r['probability'] for r in records):.3f}")
    print(f"  restored (generator's first proposal = the original): {share('restored'):.1%}; "
          f"in the first five: {share('restored_at_5'):.1%}")


if __name__ == '__main__':
    main()
