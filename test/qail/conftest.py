"""Fixtures shared by the QAIL tests."""
import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: the tests' models are tiny, and extra threads only spin on a busy
    machine (a 2 s test took 25 s with two threads on two loaded cores)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
