import subprocess
import sys

import pytest
from conftest import ROOT

# a pass as the evaluator makes one: four 16 MiB tensors alive at once, then freed; the page faults of 20 passes
CHILD = """
import resource, sys, torch
from pyro_iwae.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def one_pass():
    return [torch.ones(4, 2**20) for _ in range(4)]
one_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    one_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_reused_instead_of_faulted_back_in():
    kept = page_faults("keep")
    assert kept < 16384  # less than one pass's 64 MiB faulted in, in all 20 passes
    # by default glibc gives the 64 MiB back after every pass, and each pass faults it in again: 4 KiB a fault
    # (327,000 faults), or about 64 KiB where the kernel maps ahead (20,000); never as few as with the memory kept
    assert page_faults("default") > 2 * kept
