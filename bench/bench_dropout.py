#!/usr/bin/env python
"""CPU dropout: torch's against this project's (`_utils/speedups.py`), at the shapes of an ELECTRA-Small step.

    python bench/bench_dropout.py [--batch_size 32] [--repeats 30]

For each shape: the mask alone (0 or 1 / (1 - p); torch: `bernoulli_` then `div_`, as `F.dropout` makes it on
CPUs; ours: `dropout_mask`), and a dropout's forward and forward + backward (torch: `F.dropout`; ours:
`fast_dropout`). The two are timed alternately in one process; the median of --repeats is printed, then the total
over one step's dropouts (forward + backward). Not a test; nothing is written.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _utils.speedups import dropout_mask, fast_dropout, keep_freed_memory  # noqa: E402

P = 0.1  # RECIPE.md: dropout 0.1 on hidden states and attention probabilities


def step_shapes(batch, length=128):
    """ELECTRA-Small's dropouts in one step: (shape, how many). Hidden: embeddings + 2 per layer; attention: 1."""
    return {'discriminator hidden': ((batch, length, 256), 25),
            'discriminator attention': ((batch, 4, length, length), 12),
            'generator hidden': ((batch, length, 64), 25),
            'generator attention': ((batch, 1, length, length), 12)}


def time_once(fn, x, times):
    """Run fn(x) once; append its wall time (ms) to `times`."""
    x.grad = None
    t = time.perf_counter()
    fn(x)
    times.append(1000 * (time.perf_counter() - t))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch_size', type=int, default=32)
    p.add_argument('--repeats', type=int, default=30)
    args = p.parse_args()
    keep_freed_memory()  # as pretraining does on CPUs
    torch.manual_seed(0)
    cases = {
        'mask': (lambda x: torch.empty_like(x).bernoulli_(1 - P).div_(1 - P),   # what F.dropout builds on CPUs
                 lambda x: dropout_mask(list(x.shape), P, x.dtype)),
        'forward': (lambda x: F.dropout(x, P, training=True), lambda x: fast_dropout(x, P)),
        'forward + backward': (lambda x: F.dropout(x, P, training=True).sum().backward(),
                               lambda x: fast_dropout(x, P).sum().backward()),
    }
    print(f'CPU dropout, p = {P}, batch {args.batch_size} x 128, {torch.get_num_threads()} threads, '
          f'median of {args.repeats} (ms)\n')
    print(f'| {"shape":34s} | {"what":18s} | {"torch":>8s} | {"ours":>8s} | {"torch / ours":>12s} |')
    print(f'|{"-" * 36}|{"-" * 20}|{"-" * 10}:|{"-" * 10}:|{"-" * 14}:|')
    per_step = [0.0, 0.0]
    for name, (shape, count) in step_shapes(args.batch_size).items():
        x = torch.randn(shape, requires_grad=True)
        for what, fns in cases.items():
            times = ([], [])
            for r in range(args.repeats):
                order = (0, 1) if r % 2 else (1, 0)
                for i in order: time_once(fns[i], x, times[i])
            torch_ms, ours_ms = (statistics.median(t) for t in times)
            if what == 'forward + backward':
                per_step[0] += count * torch_ms
                per_step[1] += count * ours_ms
            print(f'| {f"{name} {tuple(shape)}":34s} | {what:18s} | {torch_ms:8.2f} | {ours_ms:8.2f} | '
                  f'{torch_ms / ours_ms:11.2f}x |')
    print(f'\nOne step\'s dropouts, forward + backward: torch {per_step[0]:.0f} ms, ours {per_step[1]:.0f} ms '
          f'({per_step[0] / per_step[1]:.2f}x)')


if __name__ == '__main__':
    main()
