"""What marktune sets of the CPU for speed (marktune/mark/hardware.py)."""
import pytest
import torch

from marktune.mark.hardware import flush_denormals

TINY = torch.finfo(torch.float32).tiny  # 1.18e-38: below it, float32 values are denormal


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.mm(torch.ones(256, 256), torch.ones(256, 256))  # torch's worker threads exist now
    # a learner run earlier in this process leaves flushing on (it is process-wide): with it on,
    # even making the denormal test values would flush them to zero
    flush_denormals(False)
    yield
    flush_denormals(False)
    torch.set_num_threads(before)


def test_flush_denormals_reaches_torchs_worker_threads(two_threads):
    # one elementwise op over 2**22 values is split over both threads; a denormal times one
    # stays denormal unless the thread that computed it flushes (DAZ/FTZ). Setting only this
    # thread (torch.set_flush_denormal) leaves the other thread's half denormal.
    x = torch.full((2 ** 22,), TINY / 4)
    if not flush_denormals(True):
        pytest.skip("this CPU cannot flush denormals")
    assert torch.count_nonzero(x * 1.0).item() == 0
    flush_denormals(False)
    assert torch.count_nonzero(x * 1.0).item() == x.numel()

