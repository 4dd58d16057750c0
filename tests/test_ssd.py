"""The chunked SSD scan and the one-step update against the recurrence, written here from its definition."""

import math
import random

import pytest
import torch

from ma2mba.engine.ssd import ssd_scan, ssd_step

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_scan(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_limit=(0.0, math.inf), initial_state=None):
    """Token by token in float64: state = exp(dt A) state + dt x ⊗ B; y = state C + D x; y *= silu(z)."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    group_of_head = torch.arange(h) // (h // g)
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    dt = torch.log1p(torch.exp(dt)).clamp(dt_limit[0], dt_limit[1])  # softplus
    state = torch.zeros(b, h, p, n, dtype=torch.float64) if initial_state is None else initial_state.double().clone()
    ys = []
    for t in range(l):
        Bt, Ct = B[:, t, group_of_head], C[:, t, group_of_head]  # (b, h, n)
        decay = torch.exp(dt[:, t] * A.double())  # (b, h)
        state = decay[:, :, None, None] * state + torch.einsum("bh,bhp,bhn->bhpn", dt[:, t], x[:, t], Bt)
        y = torch.einsum("bhpn,bhn->bhp", state, Ct)
        if D is not None:
            y = y + x[:, t] * (D.double()[:, None] if D.dim() == 1 else D.double())
        if z is not None:
            zt = z[:, t].double()
            y = y * zt * torch.sigmoid(zt)
        ys.append(y)
    return torch.stack(ys, 1), state


def random_inputs(b, l, h, p, g, n, dtype, seed, initial_state=True, D="h", z=False, dt_limit=(0.0, math.inf)):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    A = -torch.exp(torch.rand(h, generator=gen, dtype=torch.float64) * math.log(16))  # in [-16, -1], as at init
    inputs = dict(
        x=randn(b, l, h, p),
        dt=randn(b, l, h) - 2,
        A=A,
        B=randn(b, l, g, n),
        C=randn(b, l, g, n),
        dt_bias=randn(h) - 2,
        D={"h": randn(h), "hp": randn(h, p), None: None}[D],
        z=randn(b, l, h, p) if z else None,
        initial_state=randn(b, h, p, n) if initial_state else None,
    )
    inputs = {k: (v.to(dtype) if v is not None and k != "A" else v) for k, v in inputs.items()}
    inputs["A"] = A.to(torch.float32 if dtype != torch.float64 else dtype)  # A is float32 in the model
    inputs["dt_limit"] = dt_limit
    return inputs


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


TOL = {torch.float64: 1e-10, torch.float32: 1e-4}

# (b, l, h, p, g, n, chunk): lengths below, at and above the chunk, multiples and not, groups > 1.
SHAPES = [
    (2, 37, 4, 3, 1, 5, 8),
    (1, 64, 6, 4, 3, 4, 16),
    (2, 5, 2, 2, 2, 3, 16),
    (1, 1, 2, 4, 1, 8, 4),
    (1, 2, 4, 2, 4, 2, 4),
    (3, 100, 8, 8, 2, 16, 32),
    (1, 256, 4, 16, 1, 32, 64),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_chunked_scan_matches_recurrence(shape, dtype):
    *dims, chunk = shape
    for seed, (init, D, z, limit) in enumerate(
        [(True, "h", False, (0.0, math.inf)), (False, "hp", True, (0.0, math.inf)), (True, None, True, (0.05, 0.5))]
    ):
        inputs = random_inputs(*dims, dtype, seed, initial_state=init, D=D, z=z, dt_limit=limit)
        y, final = ssd_scan(chunk_size=chunk, **inputs)
        y_ref, final_ref = reference_scan(**inputs)
        assert y.dtype == dtype and final.dtype == dtype
        assert rel_err(y, y_ref) <= TOL[dtype]
        assert rel_err(final, final_ref) <= TOL[dtype]


def test_random_shapes_match_recurrence():
    rng = random.Random(0)
    for seed in range(12):
        g = rng.choice([1, 2, 4])
        dims = (rng.randint(1, 3), rng.randint(1, 90), g * rng.randint(1, 3), rng.randint(1, 8), g, rng.randint(1, 12))
        chunk = rng.choice([1, 3, 8, 16, 64])
        inputs = random_inputs(
            *dims,
            torch.float64,
            seed,
            initial_state=rng.random() < 0.5,
            D=rng.choice(["h", "hp", None]),
            z=rng.random() < 0.5,
        )
        y, final = ssd_scan(chunk_size=chunk, **inputs)
        y_ref, final_ref = reference_scan(**inputs)
        assert rel_err(y, y_ref) <= 1e-10, (dims, chunk)
        assert rel_err(final, final_ref) <= 1e-10, (dims, chunk)


def test_chunk_size_does_not_change_the_result():
    inputs = random_inputs(2, 50, 4, 4, 2, 8, torch.float64, seed=3)
    results = [ssd_scan(chunk_size=c, **inputs) for c in (1, 7, 16, 50, 256)]
    for y, final in results[1:]:
        assert rel_err(y, results[0][0]) <= 1e-12
        assert rel_err(final, results[0][1]) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_step_matches_recurrence(dtype):
    inputs = random_inputs(2, 9, 6, 4, 3, 5, dtype, seed=1, D="hp", z=True, dt_limit=(0.01, 0.8))
    y_ref, final_ref = reference_scan(**inputs)
    state = inputs["initial_state"]
    for t in range(9):
        y, new_state = ssd_step(
            state,
            inputs["x"][:, t],
            inputs["dt"][:, t],
            inputs["A"],
            inputs["B"][:, t],
            inputs["C"][:, t],
            D=inputs["D"],
            z=inputs["z"][:, t],
            dt_bias=inputs["dt_bias"],
            dt_limit=inputs["dt_limit"],
        )
        assert new_state is not state
        assert rel_err(y, y_ref[:, t]) <= TOL[dtype]
        state = new_state
    assert rel_err(state, final_ref) <= TOL[dtype]


def test_gradcheck_including_initial_state():
    inputs = random_inputs(2, 7, 4, 2, 2, 3, torch.float64, seed=5, D="h", z=True)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"]
    tensors = [inputs[k].clone().requires_grad_() for k in names]

    def scan(*args):
        return ssd_scan(chunk_size=3, **dict(zip(names, args)))  # 3 chunks, the last one partial

    assert torch.autograd.gradcheck(scan, tensors)


def test_gradients_match_autograd_through_the_recurrence():
    """A longer case than gradcheck can afford: many chunks, every input, both outputs."""
    inputs = random_inputs(2, 45, 4, 3, 2, 6, torch.float64, seed=7, D="hp", z=True)
    names = ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"]
    gen = torch.Generator().manual_seed(0)
    dy = torch.randn(2, 45, 4, 3, generator=gen, dtype=torch.float64)
    dfinal = torch.randn(2, 4, 3, 6, generator=gen, dtype=torch.float64)

    def grads(fn):
        leaves = {k: inputs[k].clone().requires_grad_() for k in names}
        y, final = fn(**{**inputs, **leaves})
        return torch.autograd.grad((y * dy).sum() + (final * dfinal).sum(), [leaves[k] for k in names])

    for name, got, want in zip(names, grads(lambda **kw: ssd_scan(chunk_size=8, **kw)), grads(reference_scan)):
        assert rel_err(got, want) <= 1e-10, name


def test_bf16_autocast_keeps_state_float32_and_is_close():
    inputs = random_inputs(1, 300, 8, 16, 1, 32, torch.float32, seed=2)
    y32, final32 = ssd_scan(chunk_size=64, **inputs)
    low = {k: (v.bfloat16() if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, final16 = ssd_scan(chunk_size=64, **low)
    assert y16.dtype == torch.bfloat16
    assert final16.dtype == torch.float32
    assert rel_err(y16, y32) <= 3e-2
    assert rel_err(final16, final32) <= 3e-2
