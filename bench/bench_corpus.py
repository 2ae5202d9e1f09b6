#!/usr/bin/env python
"""The corpus builder at the scale users run: time, memory and disk of `pretraining_examples` on N MB of text.

    python bench/bench_corpus.py --sizes 100,1000 [--max_length 128] [--num_proc 1] [--keep] [--no_raw]

For each size it writes a corpus of that many MB (10^6 bytes of UTF-8) under --out: the documents of
../shared/data/corpus (enwiki2015, about 30 MB; left out, in one line, where it is absent) and of the bundled
datasets/wiki_sample, reshuffled at each pass over them until the size is reached, in files of 64 MB with a blank
line between documents (the format `--corpus` reads). Then, each in a fresh process:
- the build, as `pretrain.py` makes it (`pretraining_examples`, the bundled BERT tokenizer, seed 0): wall and CPU
  time (on a shared core the CPU time is the one to compare), examples, the cache's size on disk and the most the
  build had on disk at once, and memory: the largest resident set (`getrusage`; it counts the pages of the
  memory-mapped Arrow files read, page cache the kernel takes back when short of memory), and the peak of the
  proportional set (PSS) summed over the build process and any children, with its anonymous part (what must fit in
  RAM), sampled from /proc/<pid>/smaps_rollup every 0.25 s; and the PSS before any text (libraries, tokenizer);
- the tokenizer alone on the same text: its batch encode (`text_to_ids`, 1,000 lines a call) without packing,
  arrays or disk, the ceiling the builder can reach.
Run it as builds run on one core: `OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false taskset -c N`.
Not a test; nothing is written outside --out, and each size's corpus and caches are deleted unless --keep.
"""
import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_CORPUS = ROOT.parent / 'shared' / 'data' / 'corpus'
FILE_MB = 64  # the generated corpus's file size


def source_documents():
    """The documents of ../shared/data/corpus and datasets/wiki_sample (blank-line separated, as `--corpus` reads)."""
    folders = [ROOT / 'datasets' / 'wiki_sample']
    if SHARED_CORPUS.is_dir(): folders.insert(0, SHARED_CORPUS)
    else: print(f'{SHARED_CORPUS} is absent: the corpus repeats the bundled 3 MB sample only')
    documents = []
    for folder in folders:
        for path in sorted(folder.rglob('*.txt')):
            documents += [d.strip('\n') for d in path.read_text(encoding='utf-8').split('\n\n') if d.strip()]
    return documents


def write_corpus(folder, megabytes, documents, seed=0):
    """`megabytes` MB of `documents`, reshuffled at every pass, in files of FILE_MB -> (bytes, documents written)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, target, written, n_docs, part, out = random.Random(seed), megabytes * 10**6, 0, 0, 0, None
    while written < target:
        order = list(range(len(documents)))
        rng.shuffle(order)
        for i in order:
            if out is None or out.tell() >= FILE_MB * 10**6:
                if out: out.close()
                out, part = open(folder / f'part_{part:05d}.txt', 'wb'), part + 1
            data = (documents[i] + '\n\n').encode('utf-8')
            out.write(data)
            written, n_docs = written + len(data), n_docs + 1
            if written >= target: break
    out.close()
    return written, n_docs


def disk_bytes(folder):
    """Bytes in the files under `folder`, while a build may be creating and deleting them."""
    total = 0
    for path in Path(folder).rglob('*'):
        try: total += path.stat().st_size if path.is_file() else 0
        except OSError: pass  # gone meanwhile
    return total


# ---------------------------------------------------------------------------------------------------------------
# Memory of a process and its children, sampled from /proc
# ---------------------------------------------------------------------------------------------------------------
def process_tree(pid):
    """`pid` and all its descendants (from the parent ids in /proc/*/stat)."""
    children = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit(): continue
        try: stat = Path(f'/proc/{entry}/stat').read_text()
        except OSError: continue
        ppid = int(stat.rsplit(')', 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def proportional_kb(pid):
    """(PSS, anonymous PSS) of a process in kB, from /proc/<pid>/smaps_rollup; (0, 0) once it is gone.

    Proportional: a page shared by n processes counts 1/n in each (the workers `datasets.map` forks share most
    of their memory with the parent), so the sum over processes is the memory they take together."""
    try: fields = dict(line.split(':', 1) for line in Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines()[1:])
    except (OSError, ValueError): return 0, 0
    kb = lambda name: int(fields.get(name, '0 kB').split()[0])
    return kb('Pss'), kb('Pss_Anon')


class Peaks(threading.Thread):
    """Every `every` seconds: the summed PSS and anonymous PSS of a process tree (kB) and the bytes under `folder`;
    keeps the largest of each."""

    def __init__(self, pid, folder=None, every=0.25):
        super().__init__(daemon=True)
        self.pid, self.folder, self.every, self.done = pid, folder, every, threading.Event()
        self.pss = self.anon = self.disk = 0

    def run(self):
        while not self.done.is_set():
            try:
                sums = [sum(v) for v in zip(*(proportional_kb(p) for p in process_tree(self.pid)))] or [0, 0]
                self.pss, self.anon = max(self.pss, sums[0]), max(self.anon, sums[1])
                if self.folder: self.disk = max(self.disk, disk_bytes(self.folder))
            except OSError: pass  # a process or file gone while read: the next sample
            self.done.wait(self.every)


# ---------------------------------------------------------------------------------------------------------------
# The measured work, each in its own process
# ---------------------------------------------------------------------------------------------------------------
def cpu_seconds():
    """CPU time of this process and its finished children (user + system)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def child_build(args):
    from _utils.text import load_tokenizer, pretraining_examples
    tokenizer = load_tokenizer()
    before_kb = proportional_kb(os.getpid())[0]     # the libraries and the tokenizer, before any text
    start, cpu_start = time.perf_counter(), cpu_seconds()
    examples = pretraining_examples(args.corpus, tokenizer, args.max_length, seed=0, num_proc=args.num_proc,
                                    cache_root=args.cache_root)
    print(json.dumps(dict(examples=len(examples), wall_s=time.perf_counter() - start,
                          cpu_s=cpu_seconds() - cpu_start, before_kb=before_kb,
                          maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                          children_maxrss_kb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)))


def child_raw(args):
    from _utils.text import load_tokenizer, text_to_ids
    tokenizer = load_tokenizer()
    seconds, cpu, tokens, lines = 0.0, 0.0, 0, []

    def encode():
        nonlocal seconds, cpu, tokens
        t, c = time.perf_counter(), time.process_time()
        ids = text_to_ids(tokenizer, lines)
        seconds, cpu = seconds + time.perf_counter() - t, cpu + time.process_time() - c
        tokens += sum(map(len, ids))
        lines.clear()

    for path in sorted(Path(args.corpus).glob('*.txt')):
        with open(path, encoding='utf-8') as f:
            for line in f:
                if line.strip(): lines.append(line.strip())
                if len(lines) == 1000: encode()
    if lines: encode()
    print(json.dumps(dict(encode_s=seconds, encode_cpu_s=cpu, tokens=tokens)))


def run_child(what, folder=None, **kwargs):
    """Run this script as `--child what` in a fresh process; -> (its JSON result, `Peaks` of it and `folder`)."""
    command = [sys.executable, __file__, '--child', what] + [f'--{k}={v}' for k, v in kwargs.items()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peaks = Peaks(process.pid, folder)
    peaks.start()
    out, _ = process.communicate()
    peaks.done.set()
    peaks.join()
    if process.returncode:
        sys.exit(f'{what} failed (exit {process.returncode}): {out[-2000:]}')
    return json.loads(out.strip().splitlines()[-1]), peaks


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', default='100,1000', help='corpus sizes in MB, comma-separated')
    p.add_argument('--max_length', type=int, default=128)
    p.add_argument('--num_proc', type=int, default=1, help="pretraining_examples' processes")
    p.add_argument('--out', default=str(ROOT / 'bench' / 'out' / 'corpus'), help='corpora and caches go here')
    p.add_argument('--keep', action='store_true', help='keep the corpora and caches')
    p.add_argument('--no_raw', action='store_true', help="skip the tokenizer's raw speed")
    p.add_argument('--child', help=argparse.SUPPRESS)
    p.add_argument('--corpus', help=argparse.SUPPRESS)
    p.add_argument('--cache_root', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child: return {'build': child_build, 'raw': child_raw}[args.child](args)
    if not Path('/proc/self/smaps_rollup').exists():
        sys.exit('bench_corpus.py samples memory from /proc/<pid>/smaps_rollup: run it on Linux 4.14 or later')

    documents = source_documents()
    threads = ' '.join(f'{k}={os.environ.get(k, "(unset)")}'
                       for k in ('OMP_NUM_THREADS', 'RAYON_NUM_THREADS', 'TOKENIZERS_PARALLELISM'))
    print(f'{len(documents):,} source documents; max_length {args.max_length}, num_proc {args.num_proc}, '
          f'cores {sorted(os.sched_getaffinity(0))}, {threads}', flush=True)
    rows = []
    for size in [int(s) for s in args.sizes.split(',')]:
        work = Path(args.out) / f'{size}MB'
        shutil.rmtree(work, ignore_errors=True)
        n_bytes, n_docs = write_corpus(work / 'corpus', size, documents)
        print(f'{size} MB: wrote {n_bytes / 1e6:,.0f} MB, {n_docs:,} documents; building...', flush=True)
        build, peaks = run_child('build', folder=work / 'cache', corpus=work / 'corpus', cache_root=work / 'cache',
                                 max_length=args.max_length, num_proc=args.num_proc)
        raw = None if args.no_raw else run_child('raw', corpus=work / 'corpus')[0]
        row = dict(mb=n_bytes / 1e6, documents=n_docs, **build, pss_kb=peaks.pss, anon_kb=peaks.anon,
                   cache_mb=disk_bytes(work / 'cache') / 1e6, peak_disk_mb=peaks.disk / 1e6,
                   others_mb=(disk_bytes(work) - disk_bytes(work / 'corpus') - disk_bytes(work / 'cache')) / 1e6,
                   raw=raw)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep: shutil.rmtree(work, ignore_errors=True)

    print('\n| text MB | documents | examples | build s (CPU s) | build MB/s (per CPU s) | tokenizer alone MB/s '
          '(per CPU s) | max RSS MB | peak PSS MB (anonymous) | before the text MB | cache MB (peak while built) |')
    print('|' + '---:|' * 10)
    for r in rows:
        raw = (f"{r['mb'] / r['raw']['encode_s']:.2f} ({r['mb'] / r['raw']['encode_cpu_s']:.2f})" if r['raw']
               else '-')
        print(f"| {r['mb']:,.0f} | {r['documents']:,} | {r['examples']:,} | {r['wall_s']:,.0f} ({r['cpu_s']:,.0f}) | "
              f"{r['mb'] / r['wall_s']:.2f} ({r['mb'] / r['cpu_s']:.2f}) | {raw} | "
              f"{max(r['maxrss_kb'], r['children_maxrss_kb']) / 1024:,.0f} | "
              f"{r['pss_kb'] / 1024:,.0f} ({r['anon_kb'] / 1024:,.0f}) | {r['before_kb'] / 1024:,.0f} | "
              f"{r['cache_mb']:,.0f} ({r['peak_disk_mb']:,.0f}) |")
    print('Anything else left under --out (the datasets cache, ...): '
          + ', '.join(f"{r['others_mb']:,.0f} MB" for r in rows))


if __name__ == '__main__':
    main()
