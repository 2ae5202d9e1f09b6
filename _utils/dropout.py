"""Dropout for CPU training: torch's distribution, its masks made 2-4x faster.

On a CPU, `torch.nn.functional.dropout` draws each decision with `bernoulli_`, 9-12 ns per element on this project's
2-core test machine. Here each element is dropped when 32 random bits fall below p * 2^32 (so P(drop) = p to within
2^-32), and the bits are drawn lazily: one 64-bit draw (`random_` on int64) gives the top 8 bits of eight elements,
which settle the decision for 255 elements in 256; only the rest (top byte equal to the threshold's) draw their low
24 bits. Kept elements are scaled by 1 / (1 - p), as torch does. `python bench/bench_dropout.py` times both at the
shapes of an ELECTRA-Small step: one step's dropouts, forward + backward, took 712-848 ms with torch's and 268-287
ms with these. Under torch.compile the mask is a custom operator (`dropout_mask`), which inductor leaves alone while
it fuses the rest. Elsewhere (GPUs, evaluation) torch's own dropout runs unchanged: on GPUs it is a fused kernel
already.

`use_fast_dropout(model)` switches a model's dropout layers and its attention-probability dropout to this.
Attention: SDPA's CPU kernel has no dropout, so in CPU training torch falls back to its math path with
`bernoulli_`; `sdpa_fast_dropout` runs the same math (softmax(QK^T / sqrt(d) + mask), dropout, times V) with the
fast dropout, and hands every other case to transformers' SDPA function.
"""
import math

import torch
import torch.nn as nn

ATTENTION = 'sdpa_fast_dropout'  # the attention implementation's name in transformers' registry


def keep_mask(shape, p, device='cpu'):
    """A bool tensor of `shape`: False (drop) where an element's 32 random bits fall below p * 2^32, so with
    probability p. The bits are drawn top byte first; the low 24 only where the top byte ties the threshold's."""
    return _decisions(shape, p, torch.uint8, device).bool()


def _decisions(shape, p, dtype, device='cpu'):
    """`keep_mask` as 1 (keep) and 0 (drop) in `dtype`. The comparisons write uint8 or float tensors: torch's CPU
    comparison kernels are ~10x slower when they write bool."""
    n = math.prod(shape)
    threshold = round(p * 2**32)                      # drop iff bits < threshold
    hi, lo = threshold >> 24, threshold & 0xFFFFFF    # threshold = hi * 2^24 + lo
    words = torch.empty(-(-n // 8), dtype=torch.int64, device=device).random_(-2**63, None)  # all 64 bits random
    top = words.view(torch.uint8)                     # each element's top 8 bits
    keep = torch.empty(top.shape, dtype=dtype, device=device)
    if not lo: return torch.ge(top, hi, out=keep)[:n].view(shape)   # the top byte decides alone
    torch.gt(top, hi, out=keep)                       # top > hi: keep; top < hi: drop; top == hi: see below
    tie = torch.eq(top, hi, out=torch.empty_like(top))  # 1 element in 256: the low 24 bits decide
    tied_words = tie.view(torch.int64).nonzero().squeeze(1)              # the few words holding a tie
    at = (tied_words.unsqueeze(1) * 8 + torch.arange(8, device=device)).flatten()
    at = at[tie[at].bool()]
    keep[at] = (torch.empty(at.numel(), dtype=torch.int32, device=device).random_(0, 2**24) >= lo).to(dtype)
    return keep[:n].view(shape)


@torch.library.custom_op('electra_fastai::dropout_mask', mutates_args=())
def dropout_mask(shape: list[int], p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of `shape`: 0 with probability p, else 1 / (1 - p) (in `dtype`'s precision).

    A custom operator, so that under torch.compile the mask is drawn here, as in eager mode, and inductor compiles
    only the multiplication (fused with what surrounds it): with inductor's own random numbers, a compiled
    ELECTRA-Small discriminator's forward took 1.2-1.5 s on the 2-core CPU, against 0.65-0.93 s eager."""
    scale = torch.tensor(1 / (1 - p), dtype=dtype).item()                          # 1/(1-p) in dtype's precision
    return _decisions(shape, p, dtype).mul_(scale)


@dropout_mask.register_fake
def _(shape, p, dtype):
    return torch.empty(shape, dtype=dtype)


def fast_dropout(x, p):
    """Training-mode dropout of CPU tensor `x` with drop probability p (0 <= p < 1)."""
    return x * dropout_mask(list(x.shape), p, x.dtype)  # autograd keeps only the mask for the backward


def _use_torch_dropout(x, p, training):
    return not training or p == 0 or p >= 1 or x.device.type != 'cpu'


class FastDropout(nn.Dropout):
    """`nn.Dropout` with `fast_dropout` in CPU training (same p, same parameters: none)."""

    def forward(self, x):
        if _use_torch_dropout(x, self.p, self.training) or self.inplace: return super().forward(x)
        return fast_dropout(x, self.p)


def sdpa_fast_dropout(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: SDPA, except in CPU training with dropout (see the module's docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if _use_torch_dropout(query, dropout, True) or kwargs.get('output_attentions'):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # query, key, value: (B, heads, L, head size)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.transpose(2, 3))                    # (B, heads, L, L)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:                                     # True = may attend
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:                                                                      # additive
            scores = scores + attention_mask
    probs = fast_dropout(scores.softmax(-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None           # (B, L, heads, head size)


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(ATTENTION, sdpa_fast_dropout)
    if ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA takes (bool, True = attend)


def use_fast_dropout(model):
    """Swap `model`'s `nn.Dropout` layers for `FastDropout` and its SDPA attention for `sdpa_fast_dropout`, in
    place; returns `model`. Weights, configs saved with the model and GPU behaviour do not change."""
    _register()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
        config = getattr(parent, 'config', None)
        if getattr(config, '_attn_implementation', None) == 'sdpa':
            config._attn_implementation = ATTENTION
    return model
