"""ELECTRA: generator and discriminator at a size, the shared embedding block, and one pretraining step.

One step (RECIPE.md, "One pretraining step"):
    mask 15% of real tokens (85% -> [MASK], 15% kept, 0% random)
    -> generator predicts the masked positions (logits only there)
    -> Gumbel-max sample at every masked position, fp32, no gradient
    -> discriminator sees the original text with the samples put in; labels: replaced = sample != original
    -> loss = 1 * MLM + 50 * replaced-token-detection
The models are Hugging Face `ElectraForMaskedLM` / `ElectraForPreTraining`, so a checkpoint exports to the
Hugging Face format with `save_pretrained`.

`objective` switches to the paper's comparisons (section 3.2, Table 5; the official code's `electra_objective`):
its entry in `objectives.OBJECTIVES` says what is trained, and the step reads it. With an MLM head the model kept for
finetuning is an `ElectraForMaskedLM` of the discriminator's size, in the discriminator's place.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import ElectraForMaskedLM, PreTrainedModel

from .errors import UserError
from .objectives import DEFAULT_OBJECTIVE, OBJECTIVES, check_objective, objective_named
from .positions import set_position, use_positions
from .speedups import inverse_cdf_sample, use_fast_dropout

# Discriminator and generator shapes. Generator: same depth, a fraction of the width (RECIPE.md, "Model sizes").
# `tiny` is this project's own size for quick CPU runs: since the CPU recipe's search (bench/RESULTS.md) 4 heads of 32
# and a generator a quarter of the discriminator's width, as the paper's Small (before: 2 heads of 64, a generator of
# half the width); the others are the paper's.
SIZES = {
    'tiny':  dict(embedding_size=128, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=512, generator=dict(hidden_size=32, num_attention_heads=1, intermediate_size=128)),
    'small': dict(embedding_size=128, hidden_size=256, num_hidden_layers=12, num_attention_heads=4,
                  intermediate_size=1024, generator=dict(hidden_size=64, num_attention_heads=1, intermediate_size=256)),
    'base':  dict(embedding_size=768, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, generator=dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
    'large': dict(embedding_size=1024, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, generator=dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024)),
}


MASK_PROB = 0.15  # RECIPE.md: 15% of the tokens are masked (the paper's Small and Base; Large uses 0.25)


def electra_configs(size, vocab_size=30522, max_position_embeddings=512, pad_token_id=0, attn_implementation='sdpa',
                    position='absolute', dropout=0.1):
    """(generator_config, discriminator_config) as `transformers.ElectraConfig`s; `position` (positions.POSITIONS)
    is recorded in both; `dropout` is both networks' hidden and attention dropout (RECIPE.md: 0.1)."""
    from transformers import ElectraConfig
    if size not in SIZES:
        raise UserError(f"unknown size '{size}'; sizes: {', '.join(SIZES)}")
    shape = dict(SIZES[size])
    gen_shape = shape.pop('generator')
    common = dict(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id,
                  hidden_act='gelu', hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                  layer_norm_eps=1e-12, initializer_range=0.02, type_vocab_size=2)
    disc = ElectraConfig(**common, **shape)
    gen = ElectraConfig(**common, **{**shape, **gen_shape})
    for c in (gen, disc):
        c._attn_implementation = attn_implementation
        set_position(c, position)
    return gen, disc


def build_models(size, vocab_size=30522, max_position_embeddings=512, pad_token_id=0, attn_implementation='sdpa',
                 objective=DEFAULT_OBJECTIVE, position='absolute', dropout=0.1):
    """A generator and a discriminator sharing the whole embedding block, generator softmax tied to word embeddings.

    With an MLM head (the objective's entry says) the discriminator's place holds an `ElectraForMaskedLM` of the
    discriminator's size; an objective without a generator gets None in its place."""
    gen_config, disc_config = electra_configs(size, vocab_size, max_position_embeddings, pad_token_id,
                                              attn_implementation, position, dropout)
    return models_for(gen_config, disc_config, objective)


def models_for(gen_config, disc_config, objective=DEFAULT_OBJECTIVE):
    """(generator or None, discriminator) for `objective`, from their configs, embeddings shared, with the positions
    the configs record (`positions.use_positions`). The objective's entry picks the second model's head."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining
    spec = objective_named(objective)
    head = ElectraForPreTraining if spec.detects else CopyingMaskedLM if spec.copy else ElectraForMaskedLM
    discriminator = use_positions(head(disc_config))
    generator = use_positions(ElectraForMaskedLM(gen_config)) if spec.generator else None
    if generator is not None: share_embeddings(generator, discriminator)
    return generator, discriminator


class CopyingMaskedLM(ElectraForMaskedLM):
    """All-Tokens MLM's model (the paper, section 3.2): Hugging Face's ElectraForMaskedLM plus a copy gate, a sigmoid
    layer on each token's hidden state whose output D is the probability that the token is the one it reads. Its
    output distribution is D on the input token plus 1 - D times the MLM softmax. The gate serves pretraining only:
    the export writes the ElectraForMaskedLM without it (`checkpoint.export_huggingface`)."""

    def __init__(self, config):
        super().__init__(config)
        self.copy_gate = nn.Linear(config.hidden_size, 1)
        nn.init.normal_(self.copy_gate.weight, std=config.initializer_range)
        nn.init.zeros_(self.copy_gate.bias)

    def all_token_outputs(self, input_ids, attention_mask=None, token_type_ids=None):
        """(MLM logits (B, L, V), copy-gate logits (B, L)) at every position."""
        hidden = self.electra(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state          # (B, L, H)
        return self.generator_lm_head(self.generator_predictions(hidden)), self.copy_gate(hidden).squeeze(-1)


def pair_from_function(spec, vocab_size, max_length):
    """Your own (generator, discriminator) from `spec` = 'path/to/file.py:function' or 'package.module:function',
    called as function(vocab_size, max_length); see `ELECTRA` for what each model must compute."""
    import importlib
    import importlib.util
    from pathlib import Path
    where, _, name = spec.rpartition(':')
    if not where or not name:
        raise UserError(f"--pair '{spec}' must be 'file.py:function' or 'module:function'")
    try:
        if where.endswith('.py'):
            if not Path(where).is_file(): raise UserError(f"--pair: '{where}' does not exist; give a .py file path")
            module_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        make = getattr(module, name)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--pair '{spec}': cannot load it ({e})") from None
    pair = make(vocab_size, max_length)
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)):
        raise UserError(f"--pair '{spec}' must return (generator, discriminator), two torch modules")
    return pair


def share_embeddings(generator, discriminator):
    # The *whole* embedding block (word, position, token type, LayerNorm) is one module; each network keeps its
    # own embeddings_project (embedding -> hidden).
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


@dataclass
class ElectraOutput:
    """Everything one step computes; the loss and the metrics read it. B batch, L length, N masked slots, V vocab.
    What an objective has no use for is None (no generator: no generator logits or samples; an MLM head: no
    discriminator logits)."""
    mlm_logits: torch.Tensor        # (B, N, V) generator logits at the masked slots
    masked_positions: torch.Tensor  # (B, N) positions of the masked slots (drawn with replacement)
    masked_ids: torch.Tensor        # (B, N) original tokens at the masked slots
    masked_weight: torch.Tensor     # (B, N) 1.0 where the slot is used (a sequence masks round(0.15*len) slots)
    sampled_ids: torch.Tensor       # (B, N) generator samples
    disc_input: torch.Tensor        # (B, L) what the second model reads: the text with the samples put in (or masked)
    disc_logits: torch.Tensor       # (B, L) discriminator logits, > 0 means "replaced"
    is_replaced: torch.Tensor       # (B, L) labels
    attention_mask: torch.Tensor    # (B, L) 1 on real (non-pad) tokens
    mlm_loss: torch.Tensor = None   # () generator loss, `mlm_loss(out)`: computed once, read by the loss and metrics
    disc_loss: torch.Tensor = None  # () discriminator loss, `discriminator_loss(out)`
    disc_weight: torch.Tensor = None  # (B, L) where the discriminator's loss counts (None: every real token)
    model_logits: torch.Tensor = None  # (B, N, V) an MLM head: the model's logits at the masked slots
    model_loss: torch.Tensor = None    # () an MLM head: the model's MLM loss
    copy_logits: torch.Tensor = None   # (B, L) the copy mechanism (All-Tokens MLM): logit of D at every token


class ELECTRA(nn.Module):
    """Generator + discriminator and the masking between them: `forward(input_ids, token_type_ids)` is one step.

    Any generator and discriminator fit, not only Hugging Face's (`build_models` makes those, `objective` picks
    what is trained: its entry in `objectives.OBJECTIVES`, which the step reads):
      generator      `generator(input_ids, attention_mask)` -> logits over the vocabulary (B, L, V); or, to compute
                     the vocabulary projection at the masked slots only, `generator.hidden_states(input_ids,
                     attention_mask)` -> (B, L, H) and `generator.lm_head` (H -> V). Hugging Face's
                     ElectraForMaskedLM is used the second way.
      discriminator  `discriminator(input_ids, attention_mask)` -> one logit per token (B, L), > 0 for "replaced"
    Either may return an object with `.logits`. Hugging Face models also get the token type ids. `vocab_size` is
    needed only for random replacements (`random_token_prob` > 0) of a pair without a Hugging Face config."""

    def __init__(self, generator, discriminator, mask_token_id, special_token_ids, pad_token_id=0, mask_prob=MASK_PROB,
                 max_predictions=None, mask_token_prob=0.85, random_token_prob=0.0, sample_temperature=1.0,
                 sampling='auto', objective=DEFAULT_OBJECTIVE, vocab_size=None):
        super().__init__()
        self.objective = check_objective(objective)  # the name, which checkpoints record
        self.spec = OBJECTIVES[objective]             # what the step computes
        if (generator is None) == self.spec.generator:
            raise UserError(f"objective '{objective}' " + ('trains no generator: pass None' if generator is not None
                                                           else 'needs a generator'))
        self.generator, self.discriminator = generator, discriminator
        use_fast_dropout(self)  # the same dropout, faster in CPU training (speedups.py)
        self.mask_token_id, self.pad_token_id = mask_token_id, pad_token_id
        self.register_buffer('special_token_ids', torch.tensor(sorted(set(special_token_ids))), persistent=False)
        self.mask_prob, self.max_predictions = mask_prob, max_predictions
        self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
        self.sample_temperature, self.sampling = sample_temperature, sampling
        config = getattr(discriminator, 'config', None)
        self.vocab_size = vocab_size or getattr(config, 'vocab_size', None)
        if random_token_prob > 0 and not self.vocab_size:
            raise UserError('random replacements (random_token_prob > 0) need the vocabulary size: pass vocab_size')

    def forward(self, input_ids, token_type_ids):
        # input_ids, token_type_ids: (B, L)
        attention_mask = (input_ids != self.pad_token_id).long()                      # (B, L)
        positions, weight = mask_positions(input_ids, attention_mask, self.special_token_ids, self.mask_prob,
                                           self.max_predictions)                      # (B, N), (B, N)
        masked_ids = input_ids.gather(1, positions)                                   # (B, N)
        masked_input = replace_masked(input_ids, positions, weight, masked_ids, self.mask_token_id,
                                      self.mask_token_prob, self.random_token_prob, self.vocab_size)
        spec = self.spec
        out = ElectraOutput(None, positions, masked_ids, weight, None, masked_input, None, None, attention_mask)
        if spec.generator:
            out.mlm_logits = generator_logits_at(self.generator, masked_input, attention_mask, token_type_ids,
                                                 positions)                           # (B, N, V)
            with torch.no_grad():  # no gradient flows through the sample
                out.sampled_ids = sample_from_softmax(out.mlm_logits, self.sample_temperature, self.sampling)  # (B, N)
            out.mlm_loss = mlm_loss(out)
        if spec.reads == 'samples':
            # The original text with samples put in at the used slots: never [MASK]
            out.disc_input = input_ids.scatter(1, positions, slot_writes(out.sampled_ids, masked_ids, weight))
            out.is_replaced = out.disc_input != input_ids    # a sample equal to the original is labelled real
        if spec.copy:  # All-Tokens MLM: every token predicted, its input token copied with probability D
            logits, out.copy_logits = self.discriminator.all_token_outputs(out.disc_input, attention_mask,
                                                                           token_type_ids)  # (B, L, V), (B, L)
            out.model_logits = logits.gather(1, positions.unsqueeze(-1).expand(-1, -1, logits.size(-1)))
            out.model_loss = copy_mlm_loss(logits, out.copy_logits, out.disc_input, input_ids, attention_mask)
            return out
        if not spec.detects:  # an MLM head predicts the original tokens at the masked positions (BERT, Replace MLM)
            out.model_logits = generator_logits_at(self.discriminator, out.disc_input, attention_mask, token_type_ids,
                                                   positions)
            out.model_loss = masked_lm_loss(out.model_logits, masked_ids, weight)
            return out
        out.disc_logits = token_logits(self.discriminator, out.disc_input, attention_mask, token_type_ids)  # (B, L)
        if spec.scored == 'masked':  # the loss only on the masked positions (else on every real token)
            out.disc_weight = used_positions(positions, weight, input_ids.shape)
        out.disc_loss = discriminator_loss(out)
        return out


def used_positions(positions, weight, shape):
    """(B, L) 1.0 at the positions of used slots (a position drawn twice counts once), else 0.0."""
    return torch.zeros(shape, device=positions.device).scatter_add(1, positions, weight).clamp(max=1)


def max_predictions_for(max_length, mask_prob):
    """Masked slots per sequence, as the official code sizes them: 19 for length 128 at 15%."""
    return max(1, int((mask_prob + 0.005) * max_length))


def mask_positions(input_ids, attention_mask, special_token_ids, mask_prob=MASK_PROB, max_predictions=None):
    """Choose positions to mask, the official way: round(mask_prob * non-pad tokens) draws, clipped to
    [1, max_predictions], with replacement among candidates (real tokens other than [CLS], [SEP], [MASK]).

    Returns positions (B, N) and weight (B, N): 1.0 for the slots in use, 0.0 for unused ones, N = max_predictions.
    Static shapes: every batch has the same N, whatever its lengths.
    """
    B, L = input_ids.shape
    N = max_predictions or max_predictions_for(L, mask_prob)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special_token_ids)        # (B, L)
    # A row with no candidate (only specials, or very short) takes position 0 with weight 0: left untouched
    no_candidate = ~candidates.any(1, keepdim=True)
    probs = (candidates | (no_candidate & (torch.arange(L, device=input_ids.device) == 0))).float()
    positions = torch.multinomial(probs, N, replacement=True)                              # (B, N)
    n_real = attention_mask.sum(1, keepdim=True)                                            # (B, 1)
    n_masked = torch.round(n_real * mask_prob).clamp(1, N)                                  # (B, 1)
    weight = (torch.arange(N, device=input_ids.device) < n_masked).float() * (~no_candidate).float()
    # Unused slots repeat slot 0, so that their writes (which restore the original) can never undo a used slot's
    positions = torch.where(weight.bool(), positions, positions[:, :1])
    return positions, weight


def replace_masked(input_ids, positions, weight, masked_ids, mask_token_id, mask_token_prob=0.85,
                   random_token_prob=0.0, vocab_size=None):
    """The generator's input: of the used slots, 85% become [MASK], the rest keep their token (paper: 0% random)."""
    u = torch.rand(positions.shape, device=input_ids.device)                               # (B, N)
    new = torch.where(u < mask_token_prob, torch.full_like(masked_ids, mask_token_id), masked_ids)
    if random_token_prob > 0:
        rand = torch.randint_like(masked_ids, vocab_size)
        new = torch.where((u >= mask_token_prob) & (u < mask_token_prob + random_token_prob), rand, new)
    return input_ids.scatter(1, positions, slot_writes(new, masked_ids, weight))


def slot_writes(values, masked_ids, weight):
    """What to scatter at the N slots (B, N): `values` at the used slots, the original token at unused ones.

    Unused slots sit at slot 0's position (`mask_positions`), so they repeat slot 0's write and can never undo it
    (the order of repeated scatter writes is undefined). A row with no used slot at all (nothing maskable) writes
    its original token back: it stays untouched, and none of its tokens is labelled replaced.
    """
    written = torch.where(weight.bool(), values, masked_ids)                            # (B, N)
    return torch.where(weight.bool(), written, written[:, :1])


def generator_logits_at(generator, input_ids, attention_mask, token_type_ids, positions):
    """Generator MLM logits at `positions` (B, N, V). A Hugging Face generator, or one with `hidden_states` and
    `lm_head`, projects onto the vocabulary at the N slots only, not at all L tokens; any other is called whole."""
    at = lambda x: x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.size(-1)))       # (B, L, D) -> (B, N, D)
    if hasattr(generator, 'generator_lm_head'):                                         # Hugging Face ELECTRA
        hidden = generator.electra(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state     # (B, L, H)
        return generator.generator_lm_head(generator.generator_predictions(at(hidden)))
    if hasattr(generator, 'hidden_states') and hasattr(generator, 'lm_head'):
        return generator.lm_head(at(generator.hidden_states(input_ids, attention_mask)))
    return at(_logits(generator(input_ids, attention_mask)))


def token_logits(discriminator, input_ids, attention_mask, token_type_ids):
    """The discriminator's logit per token (B, L): Hugging Face's with the token types, any other module with
    (input_ids, attention_mask)."""
    if isinstance(discriminator, PreTrainedModel):
        return discriminator(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    logits = _logits(discriminator(input_ids, attention_mask))
    return logits.squeeze(-1) if logits.dim() == 3 else logits


def _logits(output):
    return output.logits if hasattr(output, 'logits') else output


def sample_from_softmax(logits, temperature=1.0, method='auto'):
    """One exact sample per row from softmax(logits / T), in fp32 (call under no_grad).

    'gumbel': argmax(logits/T + Gumbel noise), the official way; one random number per vocab entry.
    'inverse_cdf': one uniform per row looked up in the cumulative softmax (`speedups.inverse_cdf_sample`); the
    same distribution, faster on CPUs, where drawing V random numbers per masked token is slow.
    'auto': gumbel on GPUs, inverse_cdf on CPUs.
    """
    if temperature != 1.0: logits = logits.float() / temperature                  # (..., V)
    if method == 'auto': method = 'gumbel' if logits.is_cuda else 'inverse_cdf'
    if method == 'gumbel':
        logits = logits.float()
        u = torch.rand_like(logits).clamp_min(1e-20)
        gumbel = -torch.log((-torch.log(u)).clamp_min(1e-20))                      # -log(-log u)
        return (logits + gumbel).argmax(-1)
    if method == 'inverse_cdf':
        probs = logits.softmax(-1, dtype=torch.float32)  # in fp32, without a separate fp32 copy of the logits
        return inverse_cdf_sample(probs.reshape(-1, probs.size(-1))).view(probs.shape[:-1])
    raise ValueError(f'unknown sampling method {method!r}')


class ElectraLoss(nn.Module):
    """1 x MLM (mean cross-entropy over used masked slots) + 50 x BCE over all non-pad tokens, from the two losses
    the forward computed (`ElectraOutput.mlm_loss`, `.disc_loss`). With an MLM head the model's MLM loss comes with
    weight 1 instead of the discriminator's; without a generator it is the whole loss."""

    def __init__(self, generator_weight=1.0, discriminator_weight=50.0):
        super().__init__()
        self.generator_weight, self.discriminator_weight = generator_weight, discriminator_weight

    def forward(self, out: ElectraOutput, *targets):
        if out.mlm_loss is None: return out.model_loss                                   # no generator
        second = self.discriminator_weight * out.disc_loss if out.disc_loss is not None else out.model_loss
        return self.generator_weight * out.mlm_loss + second


def masked_lm_loss(logits, masked_ids, weight):
    """Mean cross-entropy over the used slots: logits (B, N, V), masked_ids and weight (B, N)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), masked_ids.flatten(), reduction='none')
    w = weight.flatten()
    return (ce * w).sum() / w.sum().clamp_min(1)


def mlm_loss(out): return masked_lm_loss(out.mlm_logits, out.masked_ids, out.masked_weight)


def copy_mlm_loss(logits, copy_logits, model_input, original, attention_mask):
    """All-Tokens MLM with the copy mechanism: the mean over real tokens of -log p(original), where
    p = D [the token read is the original] + (1 - D) softmax(logits)[original] and D = sigmoid(copy_logits).

    logits (B, L, V); copy_logits, model_input (what the model read), original, attention_mask (B, L). Where the model
    read the original token (most tokens) both terms count; where it read a replacement only the MLM term can
    explain the original. Computed in log space, in fp32."""
    log_mlm = torch.log_softmax(logits.float(), -1).gather(-1, original.unsqueeze(-1)).squeeze(-1)  # (B, L)
    log_copy, log_not_copy = F.logsigmoid(copy_logits.float()), F.logsigmoid(-copy_logits.float())
    from_mlm = log_not_copy + log_mlm
    log_p = torch.where(model_input == original, torch.logaddexp(log_copy, from_mlm), from_mlm)
    real = attention_mask.float()
    return -(log_p * real).sum() / real.sum().clamp_min(1)


def discriminator_loss(out):
    """Mean BCE where `out.disc_weight` is 1 (every real token; scored 'masked': the masked positions)."""
    mask = out.attention_mask.float() if out.disc_weight is None else out.disc_weight
    bce = F.binary_cross_entropy_with_logits(out.disc_logits.float(), out.is_replaced.float(), reduction='none')
    return (bce * mask).sum() / mask.sum().clamp_min(1)


@torch.no_grad()
def step_metrics(out: ElectraOutput):
    """Per-step numbers worth logging (RECIPE.md), as 0-d tensors: the generator's and the discriminator's, or, with
    an MLM head, the model's MLM loss and accuracy. Masks are multiplied, never used to index, so nothing here
    waits for the GPU (boolean indexing would: its output size lives on the device)."""
    w = out.masked_weight
    hits = lambda ids: ((ids == out.masked_ids).float() * w).sum() / w.sum()    # accuracy over the used slots
    top = lambda logits: logits.max(-1).indices  # = argmax (first of ties), 3x faster on CPUs in bf16
    if out.disc_logits is None:  # an MLM head (in the order the paper's objective logs them)
        metrics = {} if out.mlm_logits is None else dict(
            mlm_loss=out.mlm_loss.detach(), gen_acc=hits(top(out.mlm_logits)), sampled_acc=hits(out.sampled_ids))
        metrics.update(model_mlm_loss=out.model_loss.detach(), model_acc=hits(top(out.model_logits)))
        if out.copy_logits is not None:  # All-Tokens MLM: the mean copy probability D over real tokens
            real = out.attention_mask.float()
            metrics['copy_prob'] = (torch.sigmoid(out.copy_logits.float()) * real).sum() / real.sum()
        return metrics
    real = out.attention_mask.float()                                         # (B, L)
    labels = out.is_replaced.float() * real
    predicted = (out.disc_logits > 0).float() * real
    n_real, tp = real.sum(), (predicted * labels).sum()
    scored = out.disc_weight if out.disc_weight is not None else real  # where the loss counts
    return dict(
        mlm_loss=out.mlm_loss.detach(), disc_loss=out.disc_loss.detach(),
        gen_acc=hits(top(out.mlm_logits)),
        sampled_acc=hits(out.sampled_ids),
        disc_acc=(((predicted == labels).float() * real).sum()) / n_real,
        disc_precision=tp / predicted.sum().clamp_min(1),
        disc_recall=tp / labels.sum().clamp_min(1),
        replaced_rate=(out.is_replaced.float() * scored).sum() / scored.sum().clamp_min(1),  # of the scored tokens
    )


def binary_entropy(p):
    """The loss of a majority-class guesser for a label with rate p (nats): the discriminator's baseline."""
    import math
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))
