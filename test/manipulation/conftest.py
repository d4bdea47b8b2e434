"""Shared fixtures of the manipulation tests."""
import pytest


@pytest.fixture(scope='module')
def small():
    """A small random VLA (64-wide, 2-layer Llama) whose action tokens depend on its inputs."""
    torch = pytest.importorskip('torch')
    from qail_ros.manipulation.vla import SmallVLA
    torch.manual_seed(0)
    vla = SmallVLA.create(0, llm_hidden=64, llm_layers=2)
    with torch.no_grad():               # bigger weights: tokens that depend on the inputs
        for p in vla.model.language_model.parameters():
            if p.dim() > 1:
                p.mul_(5.0)
    vla.model.eval()
    return vla
