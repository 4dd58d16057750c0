import pytest
import torch


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread. Tests use tiny tensors: splitting each small op across
    threads costs more than it saves, and on a shared machine every split waits for a busy core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
