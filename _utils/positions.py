"""Where a token is: the paper's absolute position embeddings, TUPE's untied positional attention, rotary position
embeddings (RoPE) or ALiBi's distance penalty.

RECIPE.md, "TUPE" (Ke, He and Liu, ICLR 2021, "Rethinking Positional Encoding in Language Pre-training"):

    absolute  the paper's ELECTRA: a learned position embedding added to the word embedding (Hugging Face's model)
    tupe-a    nothing added to the input; every layer's attention logits get a positional term
              (p_i U_Q)(p_j U_K)^T, the same in every layer; the word term and this term are each scaled by
              1/sqrt(2d); [CLS] is untied: its positional logits are two learned scalars (to every position, from
              every position), per head
    tupe-r    tupe-a plus a T5-style bucketed relative-position bias (per head, shared by the layers)

    alibi     ALiBi (Press, Smith and Lewis, ICLR 2022), symmetric as MosaicBERT's encoder uses it: nothing added to
              the input; every layer's attention scores get -m_h * |i - j|, a fixed slope per head (m_h = 2^(-8h/H),
              h = 1..H), so attention starts out local and no parameter is learned for it
    rope      RoFormer's rotary position embeddings (Su et al. 2021; ModernBERT's encoders use them): nothing added
              to the input; in every layer each query and key is rotated by its position, dimension pair k
              (k, k + d/2) by the angle position * 10000^(-2k/d), so a score depends on the two tokens and i - j only

A TUPE model is a Hugging Face ELECTRA model with three changes made in place by `use_positions`: the embeddings
skip the position embedding (whose table now holds the p_i; generator and discriminator share it, as they share the
absolute one), the self-attention scale becomes 1/sqrt(2d), and the model gets a `positional` module whose
(heads, L, L) logits go, with the padding, into the additive attention mask that every layer adds to its scores.
So the attention kernels stay the fast ones (SDPA takes an additive mask and a scale). The option is recorded in
the model's config (`config.position`), so whatever rebuilds a model from its config gets the same positions.
A rope model is one with the same embeddings (no position added; it has no position table) whose query and key
projections rotate their outputs (`RotaryLinear`): the attention kernels and the mask are Hugging Face's own.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.models.electra.modeling_electra import ElectraEmbeddings, ElectraModel

from .errors import UserError


@dataclass(frozen=True)
class Position:
    """One position option (`--position`): what it is, and the plain facts the rest of the code asks about it."""
    name: str
    summary: str      # one line, for --help
    exportable: bool  # Hugging Face's ELECTRA classes compute it (they know absolute positions only)
    table: bool       # keeps the learned position table (embeddings.position_embeddings); rope and alibi need none


POSITIONS = {p.name: p for p in (
    Position('absolute', "the paper's: a learned position embedding added to the input", exportable=True, table=True),
    Position('tupe-a', 'TUPE: untied positional attention, shared by the layers, [CLS] untied', exportable=False,
             table=True),
    Position('tupe-r', 'TUPE-R: tupe-a plus a T5-style bucketed relative-position bias', exportable=False, table=True),
    Position('rope', 'RoPE: queries and keys rotated by their position in every layer (RoFormer, ModernBERT)',
             exportable=False, table=False),
    Position('alibi', "ALiBi: each head's scores minus a fixed slope times the distance |i - j| (Press et al., "
             'MosaicBERT)', exportable=False, table=False),
)}
DEFAULT_POSITION = 'absolute'  # the paper's; also what configs from before the option (and Hugging Face's) hold
ROPE_BASE = 10_000  # RoFormer's: pair k turns at position * 10000^(-2k/d)
RELATIVE_BUCKETS, RELATIVE_MAX_DISTANCE = 32, 128  # T5's (and TUPE-R's): 16 buckets each way, log-spaced to 128


def check_position(position):
    if position not in POSITIONS:
        raise UserError(f"unknown position '{position}'; options: {', '.join(POSITIONS)}")
    return position


def position_named(position):
    """The entry of `position` (checked: `check_position`)."""
    return POSITIONS[check_position(position)]


def position_of(config):
    """The position option a model config records: a config object, its dict (a checkpoint's `discriminator_config`)
    or None (a --pair of your own). Configs from before the option, and Hugging Face's: absolute."""
    if isinstance(config, dict): return config.get('position', DEFAULT_POSITION)
    return getattr(config, 'position', DEFAULT_POSITION)


def set_position(config, position):
    """Record `position` in an ElectraConfig (a plain attribute: saved and read back with the config)."""
    config.position = check_position(position)
    if position == 'tupe-r':
        config.relative_buckets, config.relative_max_distance = RELATIVE_BUCKETS, RELATIVE_MAX_DISTANCE
    if position == 'rope': config.rope_base = ROPE_BASE
    return config


def relative_buckets(distance, n_buckets=RELATIVE_BUCKETS, max_distance=RELATIVE_MAX_DISTANCE):
    """T5's bidirectional buckets of `distance` = key position - query position (any integer tensor).

    Half the buckets for each direction (the upper half for keys to the right); in each half, distances below a
    quarter of the buckets get their own bucket, the rest share log-spaced buckets up to `max_distance`, beyond
    which all fall in the last."""
    half = n_buckets // 2
    exact = half // 2
    n = distance.abs()
    log_spaced = exact + (torch.log(n.clamp_min(1).float() / exact) / math.log(max_distance / exact)
                          * (half - exact)).long()
    return (distance > 0).long() * half + torch.where(n < exact, n, log_spaced.clamp_max(half - 1))


class PositionalAttention(nn.Module):
    """TUPE's positional logits, (B or 1, heads, L, L), from the shared position table (`p`, the embeddings').

    Per layer they are the same, so one forward computes them for all: (LN(p_i) U_Q)(LN(p_j) U_K)^T / sqrt(2d) per
    head, + a relative bias b(bucket(j - i)) per head with tupe-r; then the first row and column (the [CLS]
    token's) are replaced by the learned `cls_to` / `cls_from` (position 0 to itself takes `cls_to`)."""

    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // self.heads
        self.layer_norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.query = nn.Linear(config.embedding_size, config.hidden_size, bias=False)   # U_Q, all heads
        self.key = nn.Linear(config.embedding_size, config.hidden_size, bias=False)     # U_K
        self.cls_to = nn.Parameter(torch.zeros(self.heads))    # [CLS] -> every position
        self.cls_from = nn.Parameter(torch.zeros(self.heads))  # every position -> [CLS]
        self.relative = None
        if position_of(config) == 'tupe-r':
            self.n_buckets, self.max_distance = config.relative_buckets, config.relative_max_distance
            self.relative = nn.Embedding(self.n_buckets, self.heads)
        for linear in (self.query, self.key): nn.init.normal_(linear.weight, std=config.initializer_range)
        if self.relative is not None: nn.init.normal_(self.relative.weight, std=config.initializer_range)

    def forward(self, position_embeddings, position_ids):
        """position_ids (1 or B, L) -> logits (1 or B, heads, L, L), in fp32."""
        p = self.layer_norm(position_embeddings(position_ids).float())                 # (b, L, E)
        split = lambda x: x.unflatten(-1, (self.heads, self.head_size)).transpose(1, 2)  # (b, heads, L, d)
        q, k = split(self.query(p)), split(self.key(p))
        logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(2 * self.head_size)   # (b, heads, L, L)
        if self.relative is not None:
            distance = position_ids.unsqueeze(1) - position_ids.unsqueeze(2)            # (b, L, L): j - i
            buckets = relative_buckets(distance, self.n_buckets, self.max_distance)
            logits = logits + self.relative(buckets).permute(0, 3, 1, 2)
        return untie_cls(logits, self.cls_to, self.cls_from)


class AlibiBias(nn.Module):
    """ALiBi's logits (1 or B, heads, L, L): -m_h * |j - i|, the slopes m_h = 2^(-8h/H) for heads h = 1..H (the
    paper's geometric sequence; for H a power of two exactly its values). No parameters."""

    def __init__(self, config):
        super().__init__()
        heads = config.num_attention_heads
        slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)
        self.register_buffer('slopes', slopes, persistent=False)

    def forward(self, position_table, position_ids):
        """position_ids (1 or B, L) -> logits (1 or B, heads, L, L), in fp32; the table is not used."""
        distance = (position_ids.unsqueeze(1) - position_ids.unsqueeze(2)).abs().float()   # (b, L, L)
        return -self.slopes.view(1, -1, 1, 1) * distance.unsqueeze(1)


def untie_cls(logits, cls_to, cls_from):
    """`logits` (b, heads, L, L) with row 0 set to `cls_to` and column 0 (below row 0) to `cls_from`, per head."""
    L = logits.size(-1)
    first = torch.arange(L, device=logits.device) == 0
    row = first.view(L, 1) & torch.ones(1, L, dtype=torch.bool, device=logits.device)   # (L, L): i == 0
    col = ~first.view(L, 1) & first.view(1, L)                                          # i > 0, j == 0
    logits = torch.where(row, cls_to.view(-1, 1, 1).to(logits.dtype), logits)
    return torch.where(col, cls_from.view(-1, 1, 1).to(logits.dtype), logits)


def rotary_angles(length, head_size, base=ROPE_BASE, device=None):
    """(cos, sin), each (length, head_size): position i's angle for dimension pair k (k, k + d/2) is
    i * base^(-2k/d), written into both dimensions of the pair."""
    inverse_wavelength = base ** -(torch.arange(0, head_size, 2, device=device, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inverse_wavelength)  # (L, d/2)
    angles = torch.cat((angles, angles), -1)                                                             # (L, d)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """x (B, L, heads, d) with each position's dimension pairs (k, k + d/2) turned by its angle."""
    first, second = x.chunk(2, -1)
    turned = torch.cat((-second, first), -1)                  # (x_k, x_k+d/2) -> (-x_k+d/2, x_k)
    return x * cos[:, None].to(x.dtype) + turned * sin[:, None].to(x.dtype)


class RotaryLinear(nn.Linear):
    """An attention layer's query or key projection whose output is rotated by position (RoPE): a plain `nn.Linear`
    (same parameters) turned into one by `use_positions`. Positions are 0..L-1 along the sequence (dim 1)."""
    head_size: int
    base: float

    def forward(self, x):
        y = super().forward(x).unflatten(-1, (-1, self.head_size))                   # (B, L, heads, d)
        cos, sin = rotary_angles(y.size(1), self.head_size, self.base, y.device)     # (L, d)
        return rotate(y, cos, sin).flatten(-2)                                        # (B, L, heads * d)


class UntiedEmbeddings(ElectraEmbeddings):
    """Hugging Face's ELECTRA embeddings without the position embedding in the sum: word + token type, LayerNorm,
    dropout. The position table stays (same name and shape) for the positional attention to read."""

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, **unused):
        # unused: the cache's length, `cache_length` from transformers 5.24 on, `past_key_values_length` before
        if inputs_embeds is None: inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None: token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long,
                                                                device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class TupeElectraModel(ElectraModel):
    """Hugging Face's `ElectraModel` whose attention scores get a positional term, the same in every layer: TUPE's
    or ALiBi's (`positional`; made from one by `use_positions`, not constructed)."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, **kwargs):
        ref = input_ids if input_ids is not None else inputs_embeds
        B, L = ref.shape[:2]
        if position_ids is None: position_ids = torch.arange(L, device=ref.device).unsqueeze(0)
        table = getattr(self.embeddings, 'position_embeddings', None)                 # (none with alibi)
        bias = self.positional(table, position_ids)                                    # (1 or B, heads, L, L)
        if attention_mask is not None:                                                 # padding: never attended
            pad = attention_mask[:, None, None, :].to(torch.bool).logical_not()
            bias = bias.masked_fill(pad, torch.finfo(bias.dtype).min)
        bias = bias.expand(B, -1, -1, -1).to(_compute_dtype(ref))
        return super().forward(input_ids=input_ids, attention_mask=bias, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)


def _compute_dtype(ref):
    """The dtype attention scores have: autocast's where it is on, else the model's (float) dtype."""
    device = ref.device.type
    if torch.is_autocast_enabled(device): return torch.get_autocast_dtype(device)
    return ref.dtype if ref.is_floating_point() else torch.get_default_dtype()


def electra_body(model):
    """The `ElectraModel` inside a Hugging Face ELECTRA model (or the model itself)."""
    return model if isinstance(model, ElectraModel) else model.electra


def use_positions(model):
    """Make `model` (any Hugging Face ELECTRA model) use the positions its config records, in place; returns it.
    `absolute` changes nothing. Call it right after building the model, before loading weights."""
    body = electra_body(model)
    position = check_position(position_of(body.config))
    if position == 'absolute': return model
    if type(body.embeddings) is ElectraEmbeddings: body.embeddings.__class__ = UntiedEmbeddings
    if not POSITIONS[position].table and hasattr(body.embeddings, 'position_embeddings'):
        del body.embeddings.position_embeddings                                      # unused: no table to train
    if position == 'alibi' and type(body) is ElectraModel:
        body.__class__ = TupeElectraModel
        body.positional = AlibiBias(body.config).to(body.embeddings.word_embeddings.weight.device)
        return model
    if position == 'rope':
        for layer in body.encoder.layer:
            attention = layer.attention.self
            for projection in (attention.query, attention.key):
                projection.__class__ = RotaryLinear
                projection.head_size, projection.base = attention.attention_head_size, body.config.rope_base
        return model
    if type(body) is ElectraModel:
        body.__class__ = TupeElectraModel
        body.positional = PositionalAttention(body.config).to(body.embeddings.word_embeddings.weight.device)
        for layer in body.encoder.layer:
            layer.attention.self.scaling = (2 * layer.attention.self.attention_head_size) ** -0.5
    return model


def check_exportable(config):
    """Hugging Face's ELECTRA classes compute absolute positions only: a TUPE model would load there and compute
    something else, so it is refused in one line."""
    position = position_of(config)
    if not position_named(position).exportable:
        raise UserError(f"a --position {position} model cannot be exported to the Hugging Face format: its ELECTRA "
                        "classes compute absolute positions only (the model would load and compute something else); "
                        "finetune and detect with this project's checkpoint instead")
