#!/usr/bin/env python
# Generated from Detect_and_Correct.ipynb by `make scripts`: edit the notebook, not this file.

# # Detect and correct replaced words
# 
# ELECTRA's discriminator was pretrained on one question, asked of every token: *is this the original, or did the
# generator put it there?* Asked of any text, the same question points at the words that do not fit (a typo that
# made another word, a word swapped by mistake), and the generator, asked what belongs in a flagged word's place,
# proposes corrections. The paper's own example (Clark et al., Figure 1): in "the chef ate the meal", *ate* is the
# generator's replacement of *cooked*.
# 
# This notebook is the source of `detect.py` (regenerate it with `make scripts`); the cells tagged `notebook-only`
# draw the picture and work an example through. The logic lives in `_utils/detection.py`:
# 
# - **words** are the tokenizer's own (BERT's splits at spaces and around each punctuation mark and CJK character),
#   each with its place in the text, so marks land on the characters as written, case and accents kept;
# - a word's **P(replaced)** is the sigmoid of the discriminator's logit, the **maximum over the word's pieces**: a
#   word is replaced when any of its pieces is (the generator replaces pieces, not words);
# - a **long text** is read in chunks of whole words, each at most as long as the examples the model was pretrained on
#   (64 tokens for the demo; positions beyond that never got a gradient; a Hugging Face folder: its positions);
# - a word above `--threshold` is **flagged**; with `--correct` its pieces become 1, 2 (and, for a word of three
#   pieces or more, 3) `[MASK]`s, which the generator fills left to right, a word start then `##` continuations, so
#   a word of several pieces can be proposed; a proposal's probability is the product of its pieces' (no length
#   normalisation: the number of `[MASK]`s tells the generator the length, so each length's candidates share out a
#   probability of their own). The word itself is scored the same way: if the generator ranks it in its first
#   `--keep_top` (5) it is **kept** as written (pycorrector's rule), else the best proposal replaces it in the
#   **corrected** text;
# - `--rescore` puts the generator's best proposals in the word's place and ranks them by
#   log p_generator + log(1 - P(replaced) there): the generator's reading of the gap and the discriminator's of the
#   whole text with the word in it, taken together.

import warnings
from dataclasses import dataclass

warnings.filterwarnings('ignore', message='.*torch.jit.script.*is deprecated')  # raised inside a dependency

from _utils.config import Config, option
from _utils.detection import KEEP_TOP, THRESHOLD, detect, format_text, load_detector, read_texts, to_json
from _utils.files import say
from _utils.learner import pick_device


# ## 1. Configuration
# `--model` is a checkpoint of `pretrain.py` (`latest`, the default, is the newest in `checkpoints/pretrain/`; it
# holds the discriminator, the generator and the tokenizer), a Hugging Face folder (`discriminator/` and
# `generator/` inside, as `export_huggingface` writes them, or a discriminator's own folder: detection only) or a
# hub id. The texts are `--text` (several separated by `|`) or `--file` (one a line, `-` for standard input).
# `--format jsonl` writes one JSON object per text and nothing else to standard output. Any field can be set from
# the command line, e.g. `python detect.py --text "the chef ate the meal" --correct`; `--help` lists them.

@dataclass
class MyConfig(Config):
    """Flag the words of a text that a pretrained ELECTRA discriminator takes for replacements, and let its generator
    propose corrections."""
    model: str = option('latest', "'latest' (newest checkpoint in checkpoints/pretrain), a .pth checkpoint, a Hugging "
                        "Face folder (discriminator/ and generator/ inside, as export_huggingface writes, or a "
                        "discriminator's own folder) or a hub id, e.g. google/electra-small-discriminator")
    generator: str = option('', "'' (the model's own, if it has one) or a generator's folder or hub id, e.g. "
                            'google/electra-small-generator')
    text: str = option('the chef ate the meal', 'the text to read; several separated by |')
    file: str = option('', 'a text file to read instead, one text a line (- for standard input)')
    threshold: float = option(THRESHOLD, 'flag a word when its P(replaced) is above this')
    correct: bool = option(False, "correct the flagged words: the generator's most probable words of 1 to 3 pieces, "
                           'and the corrected text')
    top_k: int = option(5, 'proposals per flagged word')
    keep_top: int = option(KEEP_TOP, 'keep a flagged word as written when the generator ranks it in its first K (0: '
                           'never)')
    rescore: bool = option(False, "rank the proposals by log p_generator + log(1 - the discriminator's P(replaced) "
                           "in the word's place), highest first (implies --correct)")
    format: str = option('text', "'text' (flagged words marked ⟦word⟧(P(replaced))) or 'jsonl' (a JSON object per "
                         'text)', choices=['text', 'jsonl'])
    device: str = option('auto', 'auto, cpu, cuda or cuda:N')

    def validate(self):
        super().validate()
        self.check(0 <= self.threshold <= 1, f'--threshold must be in [0, 1], got {self.threshold}')
        self.check(self.top_k >= 1, f'--top_k must be at least 1, got {self.top_k}')
        self.check(self.keep_top >= 0, f'--keep_top must be 0 or more, got {self.keep_top}')
        if self.rescore: self.correct = True


cfg = MyConfig.from_cli()
texts = read_texts(cfg.text, cfg.file)  # bad input stops here, before a model is loaded
if cfg.format == 'text': print(cfg)     # jsonl: standard output holds the JSON lines only


# ## 2. The detector
# The discriminator with its tokenizer and, where there is one, the generator, in eval mode. A checkpoint of an MLM
# objective (`--objective mlm` or `replace-mlm`) has no discriminator head and is refused; a TUPE checkpoint works
# (its models are built with its positions).

detector = load_detector(cfg.model, cfg.generator, pick_device(cfg.device), need_generator=cfg.correct)
if cfg.format == 'text':
    say(f"{detector.source}: {'discriminator and generator' if detector.generator else 'discriminator only'}")


# ## 3. Detect, and correct
# Each text, its flagged words marked `⟦word⟧(P(replaced))`; with `--correct`, a line per flagged word: the
# generator's rank and probability of the word itself (`kept` if it is in the first `--keep_top`), then its proposals
# and their probabilities (with `--rescore`, the discriminator's P(replaced) in place after a slash), and the corrected
# text. `--format jsonl` holds the same: `generator_probability`, `generator_rank`, `kept` and `proposals` for each
# flagged word, and `corrected`.

detections = []
for text in texts:
    detections.append(detect(detector, text, cfg.threshold, cfg.correct, cfg.top_k, cfg.rescore, cfg.keep_top))
    print(format_text(detections[-1]) if cfg.format == 'text' else to_json(detections[-1]))

