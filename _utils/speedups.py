"""Machine-specific speed-ups: the same numbers as the recipe's plain code, computed faster on CPUs.

The recipe modules reach them in two places: `use_fast_dropout(model)` (electra.py, classifier.py) and
`sample_from_softmax(method='auto')` (electra.py); a Learner on a CPU calls `keep_freed_memory()`. What each buys is
measured in bench/README.md and bench/RESULTS.md (`bench/bench_dropout.py` times the dropout).

- CPU dropout: each element is dropped when 32 random bits fall below p * 2^32 (P(drop) = p to within 2^-32), kept
  ones are scaled by 1 / (1 - p), as torch does. The bits are drawn lazily: one 64-bit draw gives the top byte of
  eight elements, which settles 255 elements in 256; only ties draw their low 24 bits. The mask is a torch custom
  operator (`dropout_mask`), so torch.compile keeps it and fuses the rest. In CPU training SDPA has no dropout
  kernel, and without dropout its CPU flash kernel's backward is slow at these sizes (10 ms a layer at 64 x 64
  tokens, head size 32: 5x the math), so `sdpa_fast_dropout` runs SDPA's math (softmax(QK^T / sqrt(d) + mask),
  dropout if any, times V) in all CPU training and hands every other case to transformers' SDPA. GPUs and
  evaluation run torch's dropout and SDPA unchanged.
- Inverse-CDF sampling: one uniform per row looked up in the cumulative softmax, the same distribution as
  Gumbel-max, which draws one random number per vocabulary entry.
- Freed memory kept in the process (glibc): a CPU step's large tensors are not paged in and zeroed again each step.
"""
import math
import typing

import torch
import torch.nn as nn

ATTENTION = 'sdpa_fast_dropout'  # the attention implementation's name in transformers' registry


def keep_mask(shape, p, device='cpu'):
    """A bool tensor of `shape`: False (drop) where an element's 32 random bits fall below p * 2^32, so with
    probability p. The bits are drawn top byte first; the low 24 only where the top byte ties the threshold's."""
    return _decisions(shape, p, torch.uint8, device).bool()


def _decisions(shape, p, dtype, device='cpu'):
    """`keep_mask` as 1 (keep) and 0 (drop) in `dtype`. The comparisons write uint8 or float tensors: torch's CPU
    comparison kernels are much slower when they write bool."""
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


# typing.Sequence[int], not list[int]: torch 2.4 infers an operator's schema from the typing module's forms only
@torch.library.custom_op('electra_fastai::dropout_mask', mutates_args=())
def dropout_mask(shape: typing.Sequence[int], p: float, dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of `shape`: 0 with probability p, else 1 / (1 - p) (in `dtype`'s precision).

    A custom operator, so that under torch.compile the mask is drawn here, as in eager mode, and inductor compiles
    only the multiplication (fused with what surrounds it): inductor's own CPU random numbers are slower
    (bench/RESULTS.md)."""
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
    """transformers attention function: SDPA, except in CPU training (see the module's docstring)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    cpu_training = query.device.type == 'cpu' and module.training
    if not cpu_training or kwargs.get('output_attentions'):
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
    probs = scores.softmax(-1)
    if dropout > 0: probs = fast_dropout(probs, dropout)
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


def keep_freed_memory():
    """On Linux with glibc, keep freed memory in the process instead of giving it back to the OS.

    glibc serves every block above 32 MB (a batch's generator logits, 74 MB at Small b32) with a fresh mmap, so
    each step faults in its pages again, and the kernel zeroes them. After this, freed blocks are reused; the
    process keeps its peak memory. Returns whether it took effect (not on other platforms or C libraries).
    """
    import ctypes
    import sys
    if not sys.platform.startswith('linux'): return False
    try: libc = ctypes.CDLL('libc.so.6')
    except OSError: return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                                          # from glibc's malloc.h
    mallopt = getattr(libc, 'mallopt', None)
    return bool(mallopt and mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def inverse_cdf_sample(probs, block=256):
    """One index per row of `probs` (R, V), drawn with probability probs[r, i] / sum(probs[r]).

    A uniform u in [0, row sum) is placed first among the cumulative sums of blocks of `block` entries, then inside
    its block: the same draw as a search in the full cumulative sum, but the V-long scan (serial on CPUs) becomes
    one reduction and two short scans. (torch.multinomial draws the same sample, far slower on CPUs: see the
    notes of session 4 in bench/RESULTS.md.)
    """
    R, V = probs.shape
    n_full = V // block
    sums = [probs[:, :n_full * block].unflatten(-1, (n_full, block)).sum(-1)]      # (R, n_full)
    if V % block: sums.append(probs[:, n_full * block:].sum(-1, keepdim=True))      # the shorter last block
    block_cdf = torch.cat(sums, -1).cumsum(-1)                                     # (R, n_blocks)
    u = torch.rand(R, 1, device=probs.device) * block_cdf[:, -1:]                  # (R, 1)
    b = torch.searchsorted(block_cdf, u, right=True).clamp_max(block_cdf.size(-1) - 1)   # u's block
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp_min(0)), 0.0)    # mass of the blocks before it
    ids = b * block + torch.arange(block, device=probs.device)                     # (R, block)
    in_vocab = ids < V
    within = (probs.gather(1, ids.clamp_max(V - 1)) * in_vocab).cumsum(-1)         # (R, block)
    j = torch.searchsorted(within, u - before, right=True)
    # Rounding can put u - before a hair above the block's own sum: take its last entry then
    return (b * block + torch.minimum(j, in_vocab.sum(-1, keepdim=True) - 1)).squeeze(-1)
