"""Shared by every test."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine is shared: torch's thread pool under oversubscription is many times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
