"""Replaced-token detection and correction with a pretrained ELECTRA: the discriminator says, for every word of a
text, how likely it is to be a replacement, and the generator proposes what a flagged word might have been.

    text -> words (the tokenizer's pre-tokenizer words, with character offsets into the text) -> WordPiece ids,
            in chunks of whole words of up to the model's positions - 2 pieces, each `[CLS] pieces [SEP]`
         -> discriminator: P(replaced) = sigmoid(logit) per piece -> per word: the max over its pieces
            (a word is replaced when any of its pieces is: the generator replaces pieces, not words)
         -> words above the threshold are flagged
    a flagged word -> its pieces become n [MASK]s, n = 1 .. max(2, its pieces) (at most 3), each n filled left to
            right by the generator with a small beam: candidates of n pieces (a word start, then '##' continuations),
            scored by the sum of their pieces' log-probabilities (`generator_candidates`)
         -> the word itself scored the same way: kept as written when the generator ranks it in its first
            `keep_top` (pycorrector's rule), else replaced by its best proposal in `Detection.corrected`
         -> `rescore`: the best candidates put in the word's place and ranked by
            log p_generator + log(1 - P(replaced) there)

The models come from this project's checkpoint, a Hugging Face folder or the hub (`load_detector`).
"""
import json
import math
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
KEEP_TOP = 5     # keep a flagged word the generator ranks in its first 5 (pycorrector's rule: its fill-mask's top 5)
MAX_MASKS = 3    # a flagged word is re-masked as 1 .. max(2, its pieces) [MASK]s, at most this many
BEAM = 10        # candidates kept per filled [MASK], per number of [MASK]s (at least top_k * RESCORE_POOL)
RESCORE_POOL = 2  # --rescore reorders the generator's best top_k * RESCORE_POOL candidates
MODEL_ALTERNATIVES = ("--model latest (newest checkpoint of pretrain.py), a .pth checkpoint, a folder written by "
                      "export_huggingface (discriminator/ and generator/ inside) or a discriminator's own folder")


# ---------------------------------------------------------------------------------------------------------------
# What detection returns
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Proposal:
    word: str
    probability: float                  # the generator's: the product of its pieces', filled in left to right
    replaced_probability: float = None  # the discriminator's with this word in place (only when rescored)
    pieces: int = 1                     # its WordPiece pieces: the [MASK]s it filled


def combined_score(proposal):
    """--rescore's order, highest first: log p_generator(word) + log(1 - P(replaced) with the word in place). Two
    readings of one question, is this word the original here: the generator's from the context around the gap, the
    discriminator's from the whole text with the word filled in; multiplied as if independent."""
    return (math.log(max(proposal.probability, 1e-300))
            + math.log(max(1 - proposal.replaced_probability, 1e-6)))  # P(replaced) of 1.0 in float32 is finite here


@dataclass
class Word:
    text: str          # as written: the input's characters [start, end)
    start: int
    end: int
    ids: list          # its pieces
    probability: float = None  # P(replaced): the max over its pieces
    flagged: bool = False
    proposals: list = field(default_factory=list)  # Proposals, for flagged words when corrections were asked
    generator_probability: float = None  # the generator's for the word as written, scored as the proposals are
    generator_rank: int = None  # its rank among the generator's candidates (1: the most probable), itself included
    kept: bool = None           # ranked in the generator's first `keep_top`: left as written, not corrected


@dataclass
class Detection:
    text: str
    words: list
    threshold: float = THRESHOLD
    correct: bool = False  # corrections were asked for: flagged words carry proposals and `kept`

    @property
    def flagged(self): return [i for i, w in enumerate(self.words) if w.flagged]

    @property
    def corrected(self):
        """The text with each flagged word that is not kept replaced by its first proposal, in the word's case
        (`match_case`); everything else as written."""
        out, at = [], 0
        for w in self.words:
            if w.flagged and not w.kept and w.proposals:
                out += [self.text[at:w.start], match_case(w.proposals[0].word, w.text)]
                at = w.end
        return ''.join(out) + self.text[at:]


def match_case(word, like):
    """`word` in the case of `like`: all capitals (of two letters or more), a capital first letter, or as it is (an
    uncased vocabulary proposes lower case)."""
    if len(like) > 1 and like.isupper(): return word.upper()
    if like[:1].isupper(): return word[:1].upper() + word[1:]
    return word


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

    @cached_property
    def wordlike(self):
        """(V,) True for the pieces with a letter or digit: a word of letters or digits gets such a word proposed,
        never punctuation (punctuation gets anything)."""
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(min(self.generator.config.vocab_size,
                                                                     len(self.tokenizer)))))
        allowed = torch.zeros(self.generator.config.vocab_size, dtype=torch.bool)
        allowed[:len(tokens)] = torch.tensor([any(c.isalnum() for c in t) for t in tokens])
        return allowed

    @cached_property
    def continuations(self):
        """(V,) True for the '##' continuation pieces: what the second and later pieces of a proposal may be."""
        tokenizer, size = self.tokenizer, self.generator.config.vocab_size
        prefix = getattr(tokenizer.backend_tokenizer.model, 'continuing_subword_prefix', None) or '##'
        tokens = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
        allowed = torch.zeros(size, dtype=torch.bool)
        allowed[:len(tokens)] = torch.tensor([t.startswith(prefix) and len(t) > len(prefix) for t in tokens])
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


def detect(detector, text, threshold=THRESHOLD, correct=False, top_k=5, rescore=False, keep_top=KEEP_TOP):
    """Every word of `text` with its P(replaced), those above `threshold` flagged and, with `correct`, given the
    generator's `top_k` proposals, its own rank and `kept` (`correct_word`); `Detection.corrected` is then the text
    corrected. A text longer than the model's positions is read in chunks of whole words, each on its own."""
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
    detection = Detection(text, words, threshold, correct)
    if correct:
        for i in detection.flagged: correct_word(detector, detection, i, top_k, rescore, keep_top)
    return detection


# ---------------------------------------------------------------------------------------------------------------
# Corrections
# ---------------------------------------------------------------------------------------------------------------
def correct_word(detector, detection, index, top_k=5, rescore=False, keep_top=KEEP_TOP):
    """Word `index` of `detection` given its `top_k` proposals (`propose`), the generator's probability of the word as
    written and its rank among the candidates, and `kept`: that rank is at most `keep_top` (0: never kept), the rule
    of pycorrector's ELECTRA corrector, which leaves a word its generator ranks in its top 5. Returns every candidate
    found, most probable first (those rescored with their `replaced_probability`)."""
    word = detection.words[index]
    found, own = generator_candidates(detector, detection, index, max(BEAM, top_k * RESCORE_POOL), keep_top)
    word.generator_probability = math.exp(own)
    word.generator_rank = 1 + sum(p.probability > word.generator_probability for p in found)
    word.kept = word.generator_rank <= keep_top
    word.proposals = _best(detector, detection, index, found, top_k, rescore)
    return found


def propose(detector, detection, index, top_k=5, rescore=False):
    """The generator's `top_k` whole words for word `index` of `detection`, most probable first
    (`generator_candidates`). `rescore`: its `top_k * RESCORE_POOL` best put in the word's place and ranked by
    `combined_score` instead, highest first."""
    found, _ = generator_candidates(detector, detection, index, width=max(BEAM, top_k * RESCORE_POOL))
    return _best(detector, detection, index, found, top_k, rescore)


def _best(detector, detection, index, found, top_k, rescore):
    if not rescore: return found[:top_k]
    pool = found[:top_k * RESCORE_POOL]
    rescore_in_place(detector, detection, index, pool)
    return sorted(pool, key=combined_score, reverse=True)[:top_k]  # a stable sort: ties keep the generator's order


@torch.no_grad()
def generator_candidates(detector, detection, index, width=BEAM, one_piece=0):
    """The generator's candidates for word `index` of `detection`, most probable first, and its log-probability of
    the word as written.

    The word's pieces become n [MASK]s in its chunk, for n = 1 .. max(2, its pieces) (at most MAX_MASKS), so a word
    of two or three pieces can be proposed for a word of one and the other way round. Each n is filled left to
    right, keeping the `width` best: the first piece a word start, the others '##' continuations, each piece chosen
    seeing the ones before it. A candidate's probability is the product of its pieces' (the chain rule). There is no
    length normalisation: n [MASK]s tell the generator the length, so the n-piece candidates share out a probability
    of their own (the rest goes to gaps that are not one word) and compare as they are across n; a mean per piece
    would favour long words, whose later pieces are near certain once the first is chosen. Only a word's own
    tokenization counts (no second spelling of one word), nor the word itself, a special token, or punctuation for
    a word of letters or digits. The word as written is scored the same way with its own number of pieces. One
    [MASK] is one pass of the generator whatever the width: its best max(width, `one_piece`) are kept, so that the
    word's rank is exact up to `one_piece` among the words of one piece (among longer ones: within the beam)."""
    require_generator(detector)
    tokenizer, word = detector.tokenizer, detection.words[index]
    original = tokenizer.decode(word.ids).strip()  # as the vocabulary spells it (lower case, BERT uncased)
    first = detector.whole_words & detector.wordlike if any(c.isalnum() for c in original) else detector.whole_words
    scores = {}  # pieces -> log-probability
    for n in range(1, min(MAX_MASKS, max(2, len(word.ids))) + 1):
        before, after = _context(detector, detection, index, n)
        for pieces, log_p in _fill(detector, before, after, n, max(width, one_piece) if n == 1 else width, first):
            scores[tuple(pieces)] = log_p
    spellings = {pieces: tokenizer.decode(list(pieces)).strip() for pieces in scores}
    own_ids = tokenizer(list(spellings.values()), add_special_tokens=False)['input_ids'] if spellings else []
    found = [Proposal(spellings[pieces], math.exp(log_p), pieces=len(pieces))
             for (pieces, log_p), ids in zip(scores.items(), own_ids)
             if list(pieces) == ids and spellings[pieces] != original]
    before, after = _context(detector, detection, index, len(word.ids))
    return sorted(found, key=lambda p: -p.probability), _log_probability(detector, before, after, word.ids)


def _context(detector, detection, index, masks):
    """The pieces before and after word `index` in its chunk, cut at the far ends where `masks` pieces in the
    word's place would not fit the model's positions."""
    words = detection.words
    chunk = next(c for c in chunk_words(words, detector.max_pieces) if index in c)
    before = [piece for i in chunk if i < index for piece in words[i].ids]
    after = [piece for i in chunk if i > index for piece in words[i].ids]
    while before + after and len(before) + masks + len(after) > detector.max_pieces:
        before, after = (before[1:], after) if len(before) > len(after) else (before, after[:-1])
    return before, after


def _fill(detector, before, after, n, width, first):
    """n [MASK]s between `before` and `after` filled left to right with a beam of `width`, the first piece one of
    `first` ((V,) bool), the others continuations: [(pieces, log p)]."""
    tokenizer = detector.tokenizer
    start = 1 + len(before)  # the first [MASK], after [CLS]
    template = [tokenizer.cls_token_id, *before, *[tokenizer.mask_token_id] * n, *after, tokenizer.sep_token_id]
    beams = [([], 0.0)]
    for j in range(n):
        allowed = first if j == 0 else detector.continuations                                       # (V,)
        sequences = [template[:start] + pieces + template[start + j:] for pieces, _ in beams]
        log_p = _generator_log_probabilities(detector, sequences, [start + j] * len(beams))       # (B, V)
        total = (torch.tensor([s for _, s in beams])[:, None] + log_p).masked_fill(~allowed, -math.inf)
        top = total.flatten().topk(min(width, int(allowed.sum()) * len(beams)))
        vocab = log_p.shape[1]
        beams = [(beams[k // vocab][0] + [k % vocab], v) for v, k in zip(top.values.tolist(), top.indices.tolist())
                 if v > -math.inf]
    return beams


def _log_probability(detector, before, after, ids):
    """log p of `ids` filling as many [MASK]s between `before` and `after`, left to right (as `_fill` scores)."""
    tokenizer, start = detector.tokenizer, 1 + len(before)
    template = [tokenizer.cls_token_id, *before, *[tokenizer.mask_token_id] * len(ids), *after,
                tokenizer.sep_token_id]
    sequences = [template[:start] + ids[:j] + template[start + j:] for j in range(len(ids))]  # teacher forcing
    log_p = _generator_log_probabilities(detector, sequences, [start + j for j in range(len(ids))])  # (n, V)
    return log_p[torch.arange(len(ids)), ids].sum().item()


def _generator_log_probabilities(detector, sequences, positions, batch_size=16):
    """(N, V) the generator's log-probabilities at `positions[i]` of `sequences[i]` (ids with [CLS] and [SEP])."""
    generator, out = detector.generator, []
    heads = all(hasattr(generator, a) for a in ('electra', 'generator_predictions', 'generator_lm_head'))
    for i in range(0, len(sequences), batch_size):
        ids, attention_mask = _padded(sequences[i:i + batch_size], detector.tokenizer.pad_token_id, detector.device)
        rows = torch.arange(len(ids), device=ids.device)
        at = torch.tensor(positions[i:i + batch_size], device=ids.device)
        if heads:  # ElectraForMaskedLM's own layers, its vocabulary projection at the one position a row needs
            hidden = generator.electra(input_ids=ids, attention_mask=attention_mask).last_hidden_state[rows, at]
            logits = generator.generator_lm_head(generator.generator_predictions(hidden))                # (B, V)
        else:
            logits = generator(input_ids=ids, attention_mask=attention_mask).logits[rows, at]            # (B, V)
        out.append(torch.log_softmax(logits.float(), -1).cpu())
    return torch.cat(out)  # (N, V)


def rescore_in_place(detector, detection, index, proposals):
    """Each proposal's `replaced_probability`: the discriminator's P(replaced) with it in word `index`'s place (the
    max over its pieces, as for any word)."""
    if not proposals: return proposals
    ids = detector.tokenizer([p.word for p in proposals], add_special_tokens=False)['input_ids']
    before, after = _context(detector, detection, index, max(map(len, ids)))
    for p, pieces, in_place in zip(proposals, ids, piece_probabilities(detector, [before + i + after for i in ids])):
        p.replaced_probability = max(in_place[len(before):len(before) + len(pieces)])
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
    """The text with flagged words marked ⟦word⟧(P(replaced)), then, with corrections, a line per flagged word:
    `word (generator's rank, kept) → a (generator's probability), b, ...` (with the discriminator's P(replaced) after
    a slash, if rescored), and the corrected text."""
    text, words, out, at = detection.text, detection.words, [], 0
    for w in words:
        if w.flagged:
            out += [text[at:w.start], f'⟦{w.text}⟧({w.probability:.2f})']
            at = w.end
    lines = [''.join(out) + text[at:]]
    if not detection.flagged:
        top = max(words, key=lambda w: w.probability)
        lines.append(f'    no word above {detection.threshold} (highest: {top.text} {top.probability:.2f})')
    for w in (w for w in words if w.flagged and detection.correct):
        itself = f'rank {w.generator_rank}, {_number(w.generator_probability)}' + (': kept' if w.kept else '')
        lines.append(f'    {w.text} ({itself}) → ' + ', '.join(f'{p.word} ({_scores(p)})' for p in w.proposals))
    if detection.correct and detection.flagged: lines.append(f'  corrected: {detection.corrected}')
    return '\n'.join(lines)


def _number(probability):
    return f'{probability:.2f}' if probability >= 0.01 else f'{probability:.0e}'  # a 3-piece word's can be 1e-07


def _scores(proposal):
    rescored = proposal.replaced_probability is not None
    return _number(proposal.probability) + (f'/{proposal.replaced_probability:.2f}' if rescored else '')


def to_json(detection):
    """One JSON line: the text, every word with its offsets and P(replaced), the flagged words' indices and, with
    corrections, the flagged words' own generator probability, rank, `kept` and proposals, and the corrected text."""
    words = []
    for w in detection.words:
        words.append(dict(word=w.text, start=w.start, end=w.end, probability=w.probability, flagged=w.flagged))
        if w.flagged and detection.correct:
            words[-1].update(generator_probability=w.generator_probability, generator_rank=w.generator_rank,
                             kept=w.kept, proposals=[vars(p) for p in w.proposals])
    out = dict(text=detection.text, threshold=detection.threshold, flagged=detection.flagged, words=words)
    if detection.correct: out['corrected'] = detection.corrected
    return json.dumps(out, ensure_ascii=False)
