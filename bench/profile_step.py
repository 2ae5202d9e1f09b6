#!/usr/bin/env python
"""Where the pretraining step's time goes: torch.profiler over a few steps of pretrain.py's step.

    python bench/profile_step.py --device cuda --size small --batch_size 128 --compile reduce-overhead

Prints the wall time per step (GPU synchronised only at the ends), the GPU's busy time per step (sum of kernel
times), and the operators that take the most GPU and CPU time. Not a test; nothing is written.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step  # noqa: E402  (its shared pieces: data, loader, device)
import torch  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--size', default='small')
    p.add_argument('--batch_size', type=int, default=128)
    p.add_argument('--max_length', type=int, default=128)
    p.add_argument('--device', default='auto')
    p.add_argument('--compile', default='auto')
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--rows', type=int, default=15)
    p.add_argument('--shapes', action='store_true', help='also list operators by input shape')
    args = p.parse_args()
    args.threads, args.seed = 0, 0
    args.threads = torch.get_num_threads()
    device, precision = bench_step.setup(args)
    from _utils.electra import step_metrics
    from _utils.learner import seed_everything
    from _utils.loggers import MetricsLogger
    from _utils.pretraining import build_electra, pick_compile, pretraining_learner
    from fastai.callback.core import Callback
    from torch.profiler import ProfilerActivity, profile
    seed_everything(0)
    tokenizer, examples = bench_step.bundled_examples(args)
    total = args.warmup + args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    prof = profile(activities=activities, record_shapes=args.shapes)

    class Window(Callback):
        order = 100

        def after_batch(self):
            if self.learn.step == args.warmup:
                bench_step.synchronize(device)
                self.t0 = time.perf_counter()
                prof.__enter__()
            if self.learn.step == total:
                bench_step.synchronize(device)
                self.seconds = time.perf_counter() - self.t0
                prof.__exit__(None, None, None)

    window = Window()
    mode = pick_compile(args.compile, device)
    electra = build_electra(args.size, tokenizer, max_length=args.max_length)
    logger = MetricsLogger('/tmp/profile_step_logs', step_metrics, every=50, loggers=(), total_steps=total)
    learn = pretraining_learner(electra, bench_step.step_loader(args, examples, device, total), lr=5e-4,
                                total_steps=total, warmup_steps=total, precision=precision, device=device,
                                extra_cbs=[logger, window], compile=mode, metrics=logger)
    with learn.no_bar(): learn.fit(1)
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) \
        if device.type == 'cuda' else 0
    print(f'\nELECTRA-{args.size}, batch {args.batch_size} x {args.max_length}, {device}, {precision}, compile {mode}')
    print(f'wall time per step (profiled, so a little slower): {1000 * window.seconds / args.steps:.2f} ms')
    if device.type == 'cuda':
        print(f'GPU kernel time per step: {kernel_us / 1000 / args.steps:.2f} ms')
        print(events.table(sort_by='self_cuda_time_total', row_limit=args.rows, max_name_column_width=60))
    print(events.table(sort_by='self_cpu_time_total', row_limit=args.rows, max_name_column_width=60))
    if args.shapes:
        print(prof.key_averages(group_by_input_shape=True).table(sort_by='self_cpu_time_total', row_limit=args.rows,
                                                                 max_name_column_width=40, max_shapes_column_width=80))


if __name__ == '__main__':
    main()
