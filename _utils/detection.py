"""Replaced-token detection and correction with a pretrained ELECTRA: the discriminator says, for every word of a
text, how likely it is to be a replacement, and the generator proposes what a flagged word might have been.

    text -> words (the tokenizer's pre-tokenizer words, with character offsets into the text) -> WordPiece ids,
            in chunks of whole words of up to the model's positions - 2 pieces, each `[CLS] pieces [SEP]`
         -> discriminator: P(replaced) = sigmoid(logit) per piece -> per word: the max over its pieces
            (a word is replaced when any of its pieces is: the generator replaces pieces, not words)
         -> words above the threshold are flagged
    a flagged word -> its pieces become one [MASK] -> the generator's softmax there -> its k most probable whole
            words (no '##' continuation, special token or the word itself); `rescore`: each one put in the word's
            place and ranked by the discriminator's P(replaced) there, lowest first

The models come from this project's checkpoint, a Hugging Face folder or the hub (`load_detector`).
"""
import json
import os
import random
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from .checkpoint import (CHECKPOINT_DIR, check_own_pair, load_checkpoint, models_from_checkpoint, newest_checkpoint,
                         objective_of, tokenizer_from_checkpoint)
from .errors import UserError, first_line
from .objectives import OBJECTIVES, objective_named
from .sources import hf_model, hf_tokenizer, resolve_model

THRESHOLD = 0.5  # flag a word when P(replaced) is above this
MODEL_ALTERNATIVES = ("--model latest (newest checkpoint of pretrain.py), a .pth checkpoint, a folder written by "
                      "export_huggingface (discriminator/ and generator/ inside) or a discriminator's own folder")


# ---------------------------------------------------------------------------------------------------------------
# What detection returns
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Proposal:
    word: str
    probability: float                  # the generator's, at the re-masked word
    replaced_probability: float = None  # the discriminator's with this word in place (only when rescored)


@dataclass
class Word:
    text: str          # as written: the input's characters [start, end)
    start: int
    end: int
    ids: list          # its pieces
    probability: float = None  # P(replaced): the max over its pieces
    flagged: bool = False
    proposals: list = field(default_factory=list)  # Proposals, for flagged words when corrections were asked


@dataclass
class Detection:
    text: str
    words: list
    threshold: float = THRESHOLD

    @property
    def flagged(self): return [i for i, w in enumerate(self.words) if w.flagged]


@dataclass
class Detector:
    discriminator: torch.nn.Module      # ElectraForPreTraining
    tokenizer: object                   # a fast tokenizer (offsets, word ids)
    generator: torch.nn.Module = None   # ElectraForMaskedLM; None: detection only
    source: str = ''                    # where the models came from, for the printout
    trained_length: int = None          # tokens per example in pretraining (a checkpoint records it); None: unknown

    @property
    def device(self): return next(self.discriminator.parameters()).device

    @property
    def max_pieces(self):
        """Pieces per chunk: the length the model was pretrained at, where known (positions beyond it never got a
        gradient), else its positions (and the tokenizer's limit), less [CLS] and [SEP]."""
        return min(self.discriminator.config.max_position_embeddings, self.tokenizer.model_max_length,
                   self.trained_length or 10 ** 9) - 2

    @cached_property
    def whole_words(self):
        """(V,) True for the ids a correction may propose: no special token, no '##' continuation, no reserved
        slot such as BERT's [unused0]."""
        tokenizer, size = self.tokenizer, self.generator.config.vocab_size
        prefix = getattr(tokenizer.backend_tokenizer.model, 'continuing_subword_prefix', None) or '##'
        tokens = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
        reserved = lambda t: len(t) > 2 and t.startswith('[') and t.endswith(']')  # [unused0], [UNK], ...
        allowed = torch.zeros(size, dtype=torch.bool)
        allowed[:len(tokens)] = torch.tensor([not (t.startswith(prefix) or reserved(t)) for t in tokens])
        allowed[tokenizer.all_special_ids] = False
        return allowed

    def to(self, device):
        for model in (self.discriminator, self.generator):
            if model is not None: model.to(device).eval()
        return self


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------
def load_detector(model='latest', generator='', device='cpu', checkpoint_dir=CHECKPOINT_DIR, need_generator=False):
    """The discriminator, its tokenizer and, where there is one, the generator, in eval mode on `device`.

    model      'latest' (the newest checkpoint in `checkpoint_dir`), a .pth checkpoint of pretrain.py, a Hugging
               Face folder holding discriminator/ and generator/ (what `export_huggingface` writes) or a
               discriminator's own folder (no corrections then), or a hub id such as
               google/electra-small-discriminator (needs network)
    generator  '' (the model's own, if it has one) or an ElectraForMaskedLM folder or hub id
    need_generator  refuse a model without a generator (corrections were asked for) before any text is read
    """
    source = resolve_model(model, MODEL_ALTERNATIVES, latest=lambda: newest_checkpoint(checkpoint_dir))
    if source.kind == 'checkpoint': detector = _from_checkpoint(source.where)
    elif source.kind == 'export': detector = _from_export(source)
    elif source.kind == 'folder':
        detector = _from_huggingface(source.where, f'Hugging Face folder {source.where.resolve()}')
    else: detector = _from_huggingface(source.where, f'hub {source.where}')
    if generator:
        detector.generator = hf_model(generator, 'generator', MODEL_ALTERNATIVES)
        if detector.generator.config.vocab_size != detector.discriminator.config.vocab_size:
            raise UserError(f"--generator '{generator}' has a vocabulary of {detector.generator.config.vocab_size:,} "
                            f'tokens, the discriminator {detector.discriminator.config.vocab_size:,}; give the '
                            'generator pretrained with it')
        detector.source += f', generator {generator}'
    if need_generator: require_generator(detector)
    return detector.to(device)


def _from_checkpoint(path):
    ckpt = load_checkpoint(path)
    check_own_pair(ckpt, 'used for detection, which needs Hugging Face ELECTRA models')
    objective = objective_of(ckpt)
    if not objective_named(objective).detects:
        raise UserError(f"checkpoint '{path}' was pretrained with --objective {objective}, which has no discriminator "
                        f"head to detect replaced words; give a checkpoint of --objective "
                        f"{' or '.join(o.name for o in OBJECTIVES.values() if o.detects)}")
    generator, discriminator = models_from_checkpoint(ckpt)  # with the checkpoint's positions (TUPE too)
    return Detector(discriminator, tokenizer_from_checkpoint(ckpt), generator,
                    f"checkpoint {path.resolve()} (step {ckpt.get('step', '?')})",
                    trained_length=(ckpt.get('config') or {}).get('max_length'))


def _from_export(source):
    """What export_huggingface writes: discriminator/ and, where the objective has one, generator/."""
    folder, discriminator = source.where, source.part('discriminator')
    if discriminator is None and source.part('mlm') is not None:
        raise UserError(f"'{folder}' holds an MLM-objective export (mlm/), which has no discriminator head; export "
                        'a checkpoint of --objective electra')
    if discriminator is None:
        raise UserError(f"--model folder '{folder}' has neither discriminator/ nor config.json; give "
                        f'{MODEL_ALTERNATIVES}')
    detector = _from_huggingface(discriminator, f'Hugging Face folder {folder.resolve()}')
    if source.part('generator') is not None:
        detector.generator = hf_model(source.part('generator'), 'generator', MODEL_ALTERNATIVES)
    return detector


def _from_huggingface(name_or_path, source):
    """A discriminator's own folder or hub id with its tokenizer: detection only, unless --generator adds one."""
    return Detector(hf_model(name_or_path, 'discriminator', MODEL_ALTERNATIVES),
                    hf_tokenizer(name_or_path, MODEL_ALTERNATIVES), None, source)


def require_generator(detector):
    if detector.generator is None:
        raise UserError(f'corrections need a generator, and {detector.source} has none; give a checkpoint, a folder '
                        'with generator/ beside discriminator/, or --generator FOLDER_OR_HUB_ID')


# ---------------------------------------------------------------------------------------------------------------
# Texts, words, chunks, probabilities
# ---------------------------------------------------------------------------------------------------------------
TEXT_SEPARATOR = '|'


def read_texts(text='', file=''):
    """The texts to read: `file`'s lines (one text a line, '-' for standard input, blank lines skipped) if given,
    else `text`, several separated by '|'."""
    if file:
        if file != '-' and not Path(os.path.expanduser(file)).is_file():
            raise UserError(f"--file '{file}' does not exist; give a text file (one text a line) or - for standard "
                            'input')
        try:
            lines = sys.stdin.read() if file == '-' else Path(os.path.expanduser(file)).read_text(encoding='utf-8')
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--file '{file}' cannot be read as UTF-8 text ({first_line(e)[:120]}); give a text "
                            'file, one text a line') from None
        texts = [line.strip() for line in lines.splitlines() if line.strip()]
        if not texts: raise UserError(f"--file '{file}' has no text; give a file with one text a line")
        return texts
    texts = [t.strip() for t in text.split(TEXT_SEPARATOR) if t.strip()]
    if not texts:
        raise UserError("--text is empty; give --text 'a sentence' (several separated by |) or --file FILE")
    return texts


def words_of(tokenizer, text):
    """The words of `text` as the tokenizer's pre-tokenizer splits it (with BERT's: at spaces and around each
    punctuation mark and CJK character), each with its pieces and its place in `text`. A literal "[MASK]" is
    text like any other (`text.text_to_ids`), so no special token is in there."""
    if not text.strip(): raise UserError('the text is empty; give a sentence or more')
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True,
                         verbose=False)
    words, last = [], None
    for piece, (start, end), word_id in zip(encoding['input_ids'], encoding['offset_mapping'], encoding.word_ids()):
        if word_id is not None and word_id == last:
            words[-1].ids.append(piece)
            words[-1].end = end
        else:
            words.append(Word('', start, end, [piece]))
        last = word_id
    for w in words: w.text = text[w.start:w.end]  # as written: case, accents
    if not words: raise UserError('the text has no word the tokenizer knows; give a sentence or more')
    return words


def chunk_words(words, max_pieces):
    """Consecutive words in chunks of at most `max_pieces` pieces; a word is never cut in two."""
    chunks, pieces = [[]], 0
    for i, w in enumerate(words):
        if len(w.ids) > max_pieces:
            raise UserError(f"the word '{w.text[:40]}' has {len(w.ids)} pieces, more than the model's {max_pieces} "
                            'positions hold; split it')
        if pieces + len(w.ids) > max_pieces: chunks, pieces = chunks + [[]], 0
        chunks[-1].append(i)
        pieces += len(w.ids)
    return chunks


@torch.no_grad()
def piece_probabilities(detector, sequences, batch_size=32):
    """P(replaced) of every piece of each id sequence (without specials), each read as `[CLS] ids [SEP]`."""
    tokenizer, out = detector.tokenizer, []
    for i in range(0, len(sequences), batch_size):
        batch = [[tokenizer.cls_token_id, *s, tokenizer.sep_token_id] for s in sequences[i:i + batch_size]]
        ids, attention_mask = _padded(batch, tokenizer.pad_token_id, detector.device)      # (B, L)
        logits = detector.discriminator(input_ids=ids, attention_mask=attention_mask).logits  # (B, L)
        probabilities = torch.sigmoid(logits.float()).cpu()
        out += [probabilities[row, 1:len(s) - 1].tolist() for row, s in enumerate(batch)]
    return out


def _padded(sequences, pad_id, device):
    length = max(map(len, sequences))
    ids = torch.tensor([s + [pad_id] * (length - len(s)) for s in sequences], device=device)
    attention_mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences], device=device)
    return ids, attention_mask


def detect(detector, text, threshold=THRESHOLD, correct=False, top_k=5, rescore=False):
    """Every word of `text` with its P(replaced), those above `threshold` flagged and, with `correct`, given the
    generator's `top_k` proposals (`propose`). A text longer than the model's positions is read in chunks of whole
    words, each on its own."""
    if correct: require_generator(detector)
    words = words_of(detector.tokenizer, text)
    chunks = chunk_words(words, detector.max_pieces)
    sequences = [[piece for i in chunk for piece in words[i].ids] for chunk in chunks]
    for chunk, probabilities in zip(chunks, piece_probabilities(detector, sequences)):
        at = 0
        for w in (words[i] for i in chunk):
            w.probability = max(probabilities[at:at + len(w.ids)])  # any piece replaced: the word is
            w.flagged = w.probability > threshold
            at += len(w.ids)
    detection = Detection(text, words, threshold)
    if correct:
        for i in detection.flagged: words[i].proposals = propose(detector, detection, i, top_k, rescore)
    return detection


# ---------------------------------------------------------------------------------------------------------------
# Corrections
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def propose(detector, detection, index, top_k=5, rescore=False):
    """The generator's `top_k` whole words for word `index` of `detection`, its pieces re-masked as one [MASK] in
    its chunk, most probable first. `rescore`: each put in the word's place and ranked by the discriminator's
    P(replaced) there instead, lowest first (ties keep the generator's order). A word with letters or digits gets
    proposals with letters or digits (not punctuation)."""
    require_generator(detector)
    tokenizer, words = detector.tokenizer, detection.words
    chunk = next(c for c in chunk_words(words, detector.max_pieces) if index in c)
    before = [piece for i in chunk if i < index for piece in words[i].ids]
    after = [piece for i in chunk if i > index for piece in words[i].ids]
    masked = [tokenizer.cls_token_id, *before, tokenizer.mask_token_id, *after, tokenizer.sep_token_id]
    ids, attention_mask = _padded([masked], tokenizer.pad_token_id, detector.device)
    logits = detector.generator(input_ids=ids, attention_mask=attention_mask).logits[0, 1 + len(before)]  # (V,)
    probabilities = torch.softmax(logits.float(), -1).cpu()
    original = tokenizer.decode(words[index].ids).strip()  # as the vocabulary spells it (lower case, BERT uncased)
    wordlike = lambda s: any(c.isalnum() for c in s)  # a word gets words proposed, punctuation anything
    candidates = []
    for candidate in probabilities.masked_fill(~detector.whole_words, -1).argsort(descending=True).tolist():
        if len(candidates) == top_k or not detector.whole_words[candidate]: break
        word = tokenizer.decode([candidate]).strip()
        if word != original and (wordlike(word) or not wordlike(original)): candidates.append(candidate)
    proposals = [Proposal(tokenizer.decode([c]).strip(), probabilities[c].item()) for c in candidates]
    if rescore:
        replaced = piece_probabilities(detector, [before + [c] + after for c in candidates])
        for p, in_place in zip(proposals, replaced): p.replaced_probability = in_place[len(before)]
        proposals.sort(key=lambda p: p.replaced_probability)
    return proposals


def swap_word(tokenizer, text, index=None, new_word=None, seed=0):
    """A test case: `text` with word `index` (a random word of letters if None) swapped for `new_word` (a random
    whole word of the vocabulary if None). Returns (new text, index); `words_of(new text)[index]` is the new word
    (for a `new_word` that the tokenizer keeps as one word)."""
    rng = random.Random(seed)
    words = words_of(tokenizer, text)
    if index is None:
        letters = [i for i, w in enumerate(words) if w.text.isalpha()]
        if not letters: raise UserError(f"'{text[:60]}' has no word of letters to swap")
        index = rng.choice(letters)
    if not 0 <= index < len(words):
        raise UserError(f'word {index} asked for, the text has {len(words)} words (0 to {len(words) - 1})')
    if new_word is None: new_word = random_word(tokenizer, rng, exclude=tokenizer.decode(words[index].ids))
    w = words[index]
    return text[:w.start] + new_word + text[w.end:], index


def random_word(tokenizer, rng, exclude=None):
    """A random whole word of letters from the vocabulary (no continuation piece, no special token)."""
    prefix = getattr(tokenizer.backend_tokenizer.model, 'continuing_subword_prefix', None) or '##'
    vocab, specials = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]), set(tokenizer.all_special_ids)
    words = [t for t, i in vocab if t.isalpha() and not t.startswith(prefix) and i not in specials and t != exclude]
    return rng.choice(words)


# ---------------------------------------------------------------------------------------------------------------
# Output: marked text, JSON, a picture
# ---------------------------------------------------------------------------------------------------------------
def format_text(detection):
    """The text with flagged words marked ⟦word⟧(P(replaced)), then a line per flagged word with proposals:
    `word → a (generator's probability), b, ...` (with the discriminator's P(replaced) after a slash, if rescored)."""
    text, words, out, at = detection.text, detection.words, [], 0
    for w in words:
        if w.flagged:
            out += [text[at:w.start], f'⟦{w.text}⟧({w.probability:.2f})']
            at = w.end
    lines = [''.join(out) + text[at:]]
    if not detection.flagged:
        top = max(words, key=lambda w: w.probability)
        lines.append(f'    no word above {detection.threshold} (highest: {top.text} {top.probability:.2f})')
    for w in (w for w in words if w.proposals):
        lines.append(f'    {w.text} → ' + ', '.join(f'{p.word} ({_scores(p)})' for p in w.proposals))
    return '\n'.join(lines)


def _scores(proposal):
    rescored = proposal.replaced_probability is not None
    return f'{proposal.probability:.2f}' + (f'/{proposal.replaced_probability:.2f}' if rescored else '')


def to_json(detection):
    """One JSON line: the text, every word with its offsets and P(replaced), the flagged words' indices and, for
    those, the proposals."""
    words = []
    for w in detection.words:
        words.append(dict(word=w.text, start=w.start, end=w.end, probability=w.probability, flagged=w.flagged))
        if w.proposals: words[-1]['proposals'] = [vars(p) for p in w.proposals]
    return json.dumps(dict(text=detection.text, threshold=detection.threshold, flagged=detection.flagged,
                           words=words), ensure_ascii=False)
