"""MEFT tests run tiny models: one intra-op thread is faster than two (no spin-waiting), restored after."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
