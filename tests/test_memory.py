import pytest
import torch

from ma2mba import Mamba2Config, Mamba2LM
from ma2mba.memory import peak_bytes, record_timeline, tensor_bytes, without_data

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny ops: a second thread only waits


def hand_built_allocations():
    a = torch.empty(1000)  # 4000 bytes
    b = torch.empty(500, dtype=torch.float64)  # 4000
    view = a[10:]  # no new storage
    a.add_(1)  # in place: no new storage
    del a  # `view` keeps a's storage alive
    c = torch.empty(3000)  # 12000: the peak, 20000
    del view  # frees a's storage
    d = torch.empty(10, dtype=torch.int8)  # 10
    return b, c, d


def test_meter_counts_a_hand_built_sequence_of_allocations_exactly():
    assert peak_bytes(hand_built_allocations) == 20000
    timeline = record_timeline(hand_built_allocations)
    # one entry per operator: empty, empty, slice, add_, empty, empty
    assert list(timeline.live_bytes) == [4000, 8000, 8000, 8000, 20000, 16010]
    assert timeline.peak == 20000


def test_meter_reports_the_peak_above_what_existed_before():
    weight = torch.empty(1000, 1000)  # alive before: neither it nor its views count

    def use_weight():
        t = weight.t()
        torch.empty(10)  # 40 bytes, freed at once
        return t.detach()

    assert peak_bytes(use_weight) == 40


def test_meter_sees_what_autograd_saves_and_frees():
    x = torch.randn(1000, requires_grad=True)  # 4000-byte tensors below

    def step():
        y = x.exp()  # saved for backward (exp's gradient is its output)
        z = y.sum()
        z.backward()  # x.grad: 4000 bytes, made while y is still alive

    x.grad = None
    # y (4000) + z (4) + the ones-like seed (4) + exp's gradient (4000) + x.grad (stolen, no copy)
    assert peak_bytes(step) == 8008


def test_meter_measures_fake_tensors_like_real_ones():
    def step():
        x = torch.ones(64, 64, requires_grad=True)
        ((x @ x).sin() * 2).sum().backward()

    on_cpu = peak_bytes(step)
    with without_data():
        assert peak_bytes(step) == on_cpu > 0


def test_downsample_keeps_the_peaks():
    timeline = record_timeline(hand_built_allocations)
    assert timeline.downsample(3) == [8000, 8000, 20000]  # the maxima of pairs
    assert max(timeline.downsample(1)) == timeline.peak


def test_tensor_bytes_of_state_and_module():
    lm = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=50, ssm_cfg=dict(d_state=8, headdim=8)))
    state = lm.empty_state(3)
    assert tensor_bytes(state) == state.nbytes()
    params = {id(p): p for p in lm.parameters()}.values()  # the tied head counted once
    assert tensor_bytes(lm) == sum(p.numel() * 4 for p in params)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_meter_agrees_with_cuda_allocator():
    cfg = Mamba2Config(d_model=128, n_layer=4, vocab_size=1000, ssm_cfg=dict(d_state=32, headdim=32, chunk_size=64))
    measured = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        lm = Mamba2LM(cfg).to(device).set_checkpointing("multi_axis", layers_per_block=2, tokens_per_segment=128)
        for p in lm.parameters():
            p.grad = torch.zeros_like(p)
        ids = torch.randint(0, 1000, (2, 1024), device=device)

        def step():
            hidden = lm(ids, return_logits=False).hidden
            lm.lm_head(hidden[:, -1]).logsumexp(-1).sum().backward()

        measured[device] = peak_bytes(step, device=device)
    print(
        f"CPU meter {measured['cpu']} B, CUDA allocator {measured['cuda']} B, "
        f"difference {measured['cuda'] / measured['cpu'] - 1:+.1%}"
    )
    assert measured["cuda"] == pytest.approx(measured["cpu"], rel=0.1)
