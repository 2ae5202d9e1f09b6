"""`keep_freed_memory`: a CPU step's large tensors reuse freed memory instead of being paged in again each step."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]

# Allocate and fill a 64 MB tensor 34 times; print the minor page faults of the last 4 (steady state). With the
# memory kept, the heap first grows by a few blocks (a freed block is not always reused at once), then serves
# every fill from freed memory. How many fills that takes depends on what the process imported before: with only
# `_utils.speedups` imported, up to 12 fills in 8 probes of 30 (with `_utils.pretraining` too, up to 4), so the
# probe warms up with 30.
PROBE = """
import resource, sys, torch
sys.path.insert(0, {project!r})
from _utils.speedups import keep_freed_memory
took = keep_freed_memory() if {keep} else False
def faults_of_one_fill():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MB, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(30): faults_of_one_fill()
print(took, sum(faults_of_one_fill() for _ in range(4)))
"""


def steady_fill_faults(keep):
    out = subprocess.run([sys.executable, '-c', PROBE.format(project=str(PROJECT), keep=keep)], capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == 'True', int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='a glibc malloc setting (Linux with glibc only)')
def test_freed_blocks_are_reused_without_page_faults():
    took, faults = steady_fill_faults(keep=True)
    assert took
    _, faults_without = steady_fill_faults(keep=False)
    # Without it, glibc mmaps 64 MB afresh at each fill: 16,384 faults of 4 kB pages, or as few as 32 where the
    # kernel backs the block with 2 MB transparent huge pages (THP 'always'): at least one per 2 MB either way.
    assert faults_without >= 4 * 32
    assert faults < min(1_000, faults_without / 20), \
        f'{faults} page faults when refilling a freed 64 MB block 4 times ({faults_without} without keeping it)'
