import json
import platform
import subprocess
import sys

import pytest

# Three RPL loss steps at batch 128 (1024 pairs of 49 tokens: logits of 88 MB, above glibc's largest mmap threshold)
# after two warm-up steps; prints the page faults of each. Run in a fresh process: mallopt is process-wide.
STEPS = """
import json, resource, sys, torch
from smallvit.engine.memory import keep_freed_memory
from smallvit.objectives.grid import pair_targets, sample_pairs
from smallvit.objectives.position_labels import RelativePositionHead, relative_label_count, relative_labels
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
head, tokens = RelativePositionHead(192, relative_label_count(7, 7)), torch.randn(128, 49, 192, requires_grad=True)
pairs = sample_pairs(128, 49, 1024)
targets = pair_targets(relative_labels(7, 7), 128, None, pairs)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    head.loss(tokens, targets, pairs)[0].backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(faults[2:]))
"""


def _steady_page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True).stdout
    return sum(json.loads(out))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_kept_memory_spares_each_step_faulting_in_its_large_temporaries_again():
    unmapped, kept = _steady_page_faults("default"), _steady_page_faults("keep")
    assert unmapped > 100_000  # glibc unmaps the freed logits: every step faults their pages in again
    assert kept < unmapped / 10
