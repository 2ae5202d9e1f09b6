"""The optimizer, the schedule and parameter groups (RECIPE.md, "Optimizer and schedule").

- Adam *without* bias correction, betas (0.9, 0.999), eps 1e-6, weight decay 0.01 decoupled from the gradient
  (added to the update and scaled by the lr, as the official optimizer does), never on LayerNorm or bias.
- lr(step) = lr * (1 - step/T) * min(1, step/warmup): warmup multiplies the decay, both from step 0.
- Layer-wise lr decay for finetuning: lr * decay^(n+2-depth), depth(embeddings)=0, depth(layer i)=i+1,
  depth(head)=n+2, so the top layer gets lr*0.8^2 (the official off-by-one), unless `fixed=True`.
"""
import re

import torch


class AdamNoBiasCorrection(torch.optim.Optimizer):
    """m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr * lr_scale * (m / (sqrt(v) + eps) + wd * p).

    No bias correction: early updates are small, which is part of the recipe (with warmup). `bias_correction=True`
    gives Adam's own (m / (1 - b1^t), v / (1 - b2^t) at step t), as TUPE's finetuning uses (fairseq's Adam, whose
    weight decay is decoupled the same way: AdamW). `impl`:
    'fused'    torch's fused AdamW kernel (one kernel per step), with bias correction switched off (below);
    'foreach'  multi-tensor `torch._foreach_*` ops: a handful of kernels per step, whatever the number of tensors;
    'loop'     one tensor at a time, the plain reading of the formula (tests compare the others with it);
    'auto'     fused where torch has it (CUDA and CPU in recent torch; 5x foreach's speed on a CPU), else foreach.
    Each group may carry `lr_scale` (layer-wise lr decay) that multiplies the scheduled `lr`.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, impl='auto',
                 bias_correction=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, lr_scale=1.0,
                        bias_correction=bias_correction)
        super().__init__(params, defaults)
        if impl not in ('auto', 'fused', 'foreach', 'loop'): raise ValueError(f'unknown Adam implementation {impl!r}')
        self.impl = impl

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad(): loss = closure()
        for group in self.param_groups:
            params = [p for p in group['params'] if p.grad is not None]
            if not params: continue
            grads = [p.grad for p in params]
            corrected = group.get('bias_correction', False)
            for p in params:
                if not self.state[p]:
                    self.state[p]['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.state[p]['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if corrected: self.state[p]['step'] = torch.zeros((), dtype=torch.float32, device=p.device)
            m = [self.state[p]['exp_avg'] for p in params]
            v = [self.state[p]['exp_avg_sq'] for p in params]
            steps = None
            if corrected:
                steps = [self.state[p]['step'] for p in params]
                torch._foreach_add_(steps, 1.0)
            b1, b2 = group['betas']
            lr = group['lr'] * group.get('lr_scale', 1.0)
            wd, eps = group['weight_decay'], group['eps']
            impl = self.impl if self.impl != 'auto' else ('fused' if fused_available(params[0]) else 'foreach')
            {'fused': _adam_fused, 'foreach': _adam_foreach, 'loop': _adam_loop}[impl](params, grads, m, v, lr, b1,
                                                                                      b2, eps, wd, steps)
        return loss


def fused_available(p):
    return hasattr(torch, '_fused_adamw_') and p.device.type in ('cuda', 'cpu') and p.dtype in (torch.float32, torch.float64)


_NO_CORRECTION_STEP = {}


def _adam_fused(params, grads, m, v, lr, b1, b2, eps, wd, steps=None):
    # torch's fused AdamW computes p = p * (1 - lr * wd) - lr * m_hat / (sqrt(v_hat) + eps), which is the official
    # update (weight decay added to the update, times lr) up to rounding, with m_hat = m / (1 - b1^t) and
    # v_hat likewise. Without `steps` (no bias correction) t = 2^62 (exact in fp32): b^t underflows to 0, the
    # "correction" divides by 1.
    device = params[0].device
    if device not in _NO_CORRECTION_STEP:
        _NO_CORRECTION_STEP[device] = torch.tensor(2.0 ** 62, dtype=torch.float32, device=device)
    steps = steps if steps is not None else [_NO_CORRECTION_STEP[device]] * len(params)
    torch._fused_adamw_(params, grads, m, v, [], steps, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps,
                        amsgrad=False, maximize=False)


def _corrections(steps, b1, b2):
    """(1 - b1^t, sqrt(1 - b2^t)) at the step `t` the parameters share (1.0, 1.0 without bias correction)."""
    if steps is None: return 1.0, 1.0
    t = float(steps[0])
    return 1 - b1 ** t, (1 - b2 ** t) ** 0.5


def _adam_foreach(params, grads, m, v, lr, b1, b2, eps, wd, steps=None):
    first, second = _corrections(steps, b1, b2)
    torch._foreach_lerp_(m, grads, 1 - b1)                  # m = b1 m + (1-b1) g
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, grads, grads, 1 - b2)         # v = b2 v + (1-b2) g^2
    denom = torch._foreach_sqrt(v)
    if second != 1.0: torch._foreach_div_(denom, second)     # sqrt(v_hat)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(m, denom)                    # m / (sqrt(v) + eps)
    if first != 1.0: torch._foreach_div_(update, first)      # m_hat
    if wd: torch._foreach_add_(update, params, alpha=wd)     # + wd * p (decoupled from the gradient)
    torch._foreach_add_(params, update, alpha=-lr)


def _adam_loop(params, grads, m, v, lr, b1, b2, eps, wd, steps=None):
    first, second = _corrections(steps, b1, b2)
    for p, g, m_, v_ in zip(params, grads, m, v):
        m_.mul_(b1).add_(g, alpha=1 - b1)
        v_.mul_(b2).addcmul_(g, g, value=1 - b2)
        update = (m_ / first) / (v_.sqrt() / second + eps)
        if wd: update = update + wd * p
        p.add_(update, alpha=-lr)


def linear_warmup_decay(step, total_steps, warmup_steps):
    """The lr multiplier at `step` (0-based): (1 - step/T) * min(1, step/warmup). Step 0 has lr 0."""
    decay = max(0.0, 1.0 - step / total_steps)
    warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return decay * warmup


def no_weight_decay(name):
    """LayerNorm and bias parameters get no weight decay."""
    return name.endswith('bias') or 'LayerNorm' in name or 'layer_norm' in name


def parameter_groups(model, weight_decay=0.01, layer_lr_decay=None, n_layers=None, fix_layer_decay=False):
    """Parameter groups: (decay / no decay) x (one group per depth when `layer_lr_decay` is set).

    Each group carries `lr_scale`, the factor applied to the scheduled lr. Shared parameters appear once.
    """
    groups, seen = {}, set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen: continue
        seen.add(id(p))
        wd = 0.0 if no_weight_decay(name) else weight_decay
        scale = 1.0
        if layer_lr_decay is not None:
            depth = layer_depth(name, n_layers)
            top = n_layers + 2 if not fix_layer_decay else n_layers + 1
            scale = layer_lr_decay ** max(0, top - depth)
        key = (wd, scale)
        groups.setdefault(key, dict(params=[], weight_decay=wd, lr_scale=scale, names=[]))
        groups[key]['params'].append(p)
        groups[key]['names'].append(name)
    return list(groups.values())


def layer_depth(name, n_layers):
    """depth(embeddings)=0, depth(encoder layer i)=i+1, anything else (the task head) = n_layers+2. TUPE's positional
    module (`positional.`: U_Q, U_K, its LayerNorm, the [CLS] scalars, the relative bias) sits with the embeddings:
    like the position table it works from, it is input-side and shared by every layer."""
    if 'embeddings' in name or name.startswith('positional.') or '.positional.' in name: return 0
    m = re.search(r'layer\.(\d+)\.', name)
    if m: return int(m.group(1)) + 1
    return n_layers + 2


def make_optimizer(model, lr, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-6, layer_lr_decay=None, n_layers=None,
                   fix_layer_decay=False, impl='auto', bias_correction=False):
    groups = parameter_groups(model, weight_decay, layer_lr_decay, n_layers, fix_layer_decay)
    for g in groups: g.pop('names')
    return AdamNoBiasCorrection(groups, lr=lr, betas=betas, eps=eps, impl=impl, bias_correction=bias_correction)
