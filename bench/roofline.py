#!/usr/bin/env python
"""This machine's own matrix-multiply speed on the shapes of an ELECTRA pretraining step, and the step time it bounds.

Every matrix product of one step (forward, and the two products of each in the backward: the input's gradient and
the weight's) is listed with its shape and count; each shape is timed alone, in bf16 and in fp32, with the threads
the step uses. Then:

    peak               the fastest rate measured on any of the step's shapes (TFLOP/s)
    matmul-bound time  sum over the step's products of FLOPs / (that shape's measured rate): the step's time if it
                       did nothing but its matrix products, each as fast as this machine runs it alone

`bench_step.py` divides that bound by each implementation's measured step time ("of roofline": 100% would be a step
that is all matrix products at full speed).

    python bench/roofline.py --size tiny --batch_size 16
    python bench/roofline.py --size small --batch_size 32 --dtype bf16
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

DTYPES = {'bf16': torch.bfloat16, 'fp32': torch.float32}


def step_products(size, batch_size, max_length, vocab_size=30_522, position='absolute'):
    """The matrix products of one pretraining step as this project computes it: a list of (name, batch, m, k, n,
    count) for C (batch, m, n) = A (batch, m, k) @ B (batch, k, n), forward and backward together."""
    from _utils.electra import electra_configs, max_predictions_for
    gen, disc = electra_configs(size, vocab_size=vocab_size)
    B, L = batch_size, max_length
    T, M = B * L, B * max_predictions_for(L, 0.15)                  # tokens, masked slots
    products = []

    def linear(name, rows, fan_in, fan_out, count=1):
        # forward x W, backward dX = dY W^T and dW = X^T dY
        products.extend([(f'{name} fwd', 1, rows, fan_in, fan_out, count),
                         (f'{name} dX', 1, rows, fan_out, fan_in, count),
                         (f'{name} dW', 1, fan_in, rows, fan_out, count)])

    def encoder(tag, c):
        h, i, e, n = c.hidden_size, c.intermediate_size, c.embedding_size, c.num_hidden_layers
        heads, d = c.num_attention_heads, c.hidden_size // c.num_attention_heads
        if e != h: linear(f'{tag} embeddings_project', T, e, h)
        linear(f'{tag} q,k,v,out', T, h, h, 4 * n)
        linear(f'{tag} ffn in', T, h, i, n)
        linear(f'{tag} ffn out', T, i, h, n)
        # scores = Q K^T and out = P V, each with two backward products
        products.extend([(f'{tag} QK^T', B * heads, L, d, L, 3 * n), (f'{tag} PV', B * heads, L, L, d, 3 * n)])

    encoder('generator', gen)
    linear('generator head dense', M, gen.hidden_size, gen.embedding_size)
    linear('generator vocab projection', M, gen.embedding_size, vocab_size)
    encoder('discriminator', disc)
    linear('discriminator head dense', T, disc.hidden_size, disc.hidden_size)
    return products


def flops(products):
    return sum(2 * b * m * k * n * count for _, b, m, k, n, count in products)


def time_product(b, m, k, n, dtype, min_seconds=0.2):
    """Seconds per product of (b, m, k) @ (b, k, n) in `dtype`: the median of 5 runs of enough repeats."""
    a, w = torch.randn(b, m, k).to(dtype), torch.randn(b, k, n).to(dtype)
    out = torch.empty(b, m, n, dtype=dtype)
    mm = (lambda: torch.bmm(a, w, out=out)) if b > 1 else (lambda: torch.mm(a[0], w[0], out=out[0]))
    mm()
    reps, t0 = 1, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds / 5:
        mm(); reps += 1
    reps = max(1, reps)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps): mm()
        times.append((time.perf_counter() - t0) / reps)
    return sorted(times)[2]


def roofline(size, batch_size, max_length, dtype, vocab_size=30_522):
    """dict(peak, bound_s, flops, rows): rows are (name, shape, count, TFLOP/s) for each distinct product."""
    products = step_products(size, batch_size, max_length, vocab_size)
    rates, rows, bound = {}, [], 0.0
    for name, b, m, k, n, count in products:
        key = (b, m, k, n)
        if key not in rates: rates[key] = 2 * b * m * k * n / time_product(b, m, k, n, DTYPES[dtype])
        bound += 2 * b * m * k * n * count / rates[key]
        rows.append((name, f'{b}x{m}x{k}x{n}' if b > 1 else f'{m}x{k}x{n}', count, rates[key] / 1e12))
    return dict(peak=max(rates.values()), bound_s=bound, flops=flops(products), rows=rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--size', default='tiny')
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--max_length', type=int, default=128)
    p.add_argument('--vocab_size', type=int, default=30_522)
    p.add_argument('--dtype', default='bf16,fp32', help='comma list among bf16, fp32')
    p.add_argument('--threads', type=int, default=0, help='torch threads; 0: all cores')
    args = p.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    print(f'ELECTRA-{args.size}, batch {args.batch_size} x {args.max_length}, vocabulary {args.vocab_size:,}; '
          f'{torch.get_num_threads()} threads')
    for dtype in args.dtype.split(','):
        r = roofline(args.size, args.batch_size, args.max_length, dtype, args.vocab_size)
        print(f'\n{dtype}: {r["flops"] / 1e9:.2f} GFLOP per step; peak {r["peak"] / 1e12:.2f} TFLOP/s; '
              f'matmul-bound step time {r["bound_s"] * 1e3:.1f} ms')
        print('| product | shape (batch x m x k x n) | per step | TFLOP/s |\n|---|---|---:|---:|')
        for name, shape, count, rate in r['rows']:
            print(f'| {name} | {shape} | {count} | {rate:.3f} |')


if __name__ == '__main__':
    main()
