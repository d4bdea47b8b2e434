"""Shared fixtures of the OpenVLA tests: offline Hugging Face libraries, one torch thread."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('TRANSFORMERS_OFFLINE', '1')
    torch.set_num_threads(1)
