"""The SSD scan of Mamba-2 ("state space duality", Dao & Gu 2024), in pure PyTorch.

Per head h the recurrence is, for every position t,
    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * x_t ⊗ B_t        # (P, N)
    y_t     = state_t @ C_t + D_h * x_t
with dt_t = softplus(dt_raw_t + dt_bias_h), clamped to dt_limit.

`ssd_scan` evaluates it chunk by chunk: inside a chunk of T positions the map from inputs to
outputs is a masked (T, T) matrix (the "quadratic", attention-like form); between chunks only
the (P, N) state per head is passed on. `ssd_step` is one step of the recurrence for decoding.

Shapes: b batch, l length, h heads, p head dim, g groups (B and C are shared by the h/g heads
of a group), n state size, c chunks, T chunk length.

Precision follows mamba_ssm: dt, the cumulative decays, the exponentials and the carried state
are float32 (float64 if the inputs are float64); the matrix products run in the input dtype,
so bf16 autocast speeds them up without touching the state.

On CUDA, when mamba_ssm is importable, both functions hand the same call to its Triton kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # the CUDA fast path is optional
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _cuda_chunk_scan
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as _cuda_state_update
except Exception:  # ImportError, or a broken CUDA install
    _cuda_chunk_scan = None
    _cuda_state_update = None

NO_DT_LIMIT = (0.0, float("inf"))


def cuda_kernels_available(t: torch.Tensor) -> bool:
    return t.is_cuda and _cuda_chunk_scan is not None


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent state is carried in: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def discretize_dt(dt, dt_bias=None, dt_softplus=True, dt_limit=NO_DT_LIMIT):
    """dt_raw (…, h) -> dt (…, h) in the state dtype, as mamba_ssm computes it."""
    dt = dt.to(state_dtype(dt.dtype))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_DT_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def segsum(x: torch.Tensor) -> torch.Tensor:
    """x (…, T) -> (…, T, T) with out[i, j] = x[j+1] + … + x[i] for i >= j, -inf above the diagonal.

    Summing the masked increments directly (rather than subtracting two cumulative sums)
    keeps the result exact to rounding however large the cumulative sums grow.
    """
    T = x.size(-1)
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    x = x[..., None].expand(*x.shape, T).masked_fill(~strictly_lower, 0)  # (…, T_i, T_j) = x[i]
    out = x.cumsum(dim=-2)
    lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(0)
    return out.masked_fill(~lower, -math.inf)


def ssd_scan(
    x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=True,
    dt_limit=NO_DT_LIMIT, initial_state=None,
):
    """Chunked SSD scan.

    x (b, l, h, p), dt (b, l, h) raw, A (h,) negative, B and C (b, l, g, n),
    D (h,) or (h, p), z (b, l, h, p) gates the output with silu(z),
    initial_state (b, h, p, n) or None.
    Returns y (b, l, h, p) in x's dtype and the final state (b, h, p, n) in the state dtype.
    """
    if cuda_kernels_available(x):
        y, final = _cuda_chunk_scan(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_state,
            dt_softplus=dt_softplus, dt_limit=tuple(dt_limit), return_final_states=True,
        )
        return y, final

    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    sdt = state_dtype(x.dtype)
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b, l, h)

    # A short call (one frame while streaming) is one chunk of its own length, not a padded one.
    T = min(chunk_size, l)
    pad = (-l) % T
    if pad:  # dt = 0 on padding: no decay and no input, so the final state is unchanged
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (l + pad) // T

    xdt = (x * dt[..., None]).to(x.dtype)  # (b, L, h, p)
    xdt = xdt.view(b, c, T, h, p).permute(0, 1, 3, 2, 4)  # (b, c, h, T, p)
    Bc = B.view(b, c, T, g, n).permute(0, 1, 3, 2, 4)  # (b, c, g, T, n)
    Cc = C.view(b, c, T, g, n).permute(0, 1, 3, 2, 4)  # (b, c, g, T, n)
    dA = (dt * A.to(sdt)).view(b, c, T, h).transpose(2, 3)  # (b, c, h, T), <= 0
    dA_cum = dA.cumsum(-1)  # (b, c, h, T)

    # 1. Inside each chunk: y = (C Bᵀ ∘ decay) x, the quadratic form.
    CB = Cc @ Bc.transpose(-1, -2)  # (b, c, g, T, T)
    decay = torch.exp(segsum(dA))  # (b, c, h, T, T)
    M = (CB.to(sdt)[:, :, :, None] * decay.view(b, c, g, h // g, T, T)).view(b, c, h, T, T)
    y = M.to(x.dtype) @ xdt  # (b, c, h, T, p)

    # 2. The state each chunk adds on its own: Σ_s decay_to_end(s) · x_s ⊗ B_s.
    decay_to_end = torch.exp(dA_cum[..., -1:] - dA_cum)  # (b, c, h, T)
    xw = (xdt * decay_to_end[..., None].to(x.dtype)).view(b, c, g, h // g, T, p)
    xw = xw.permute(0, 1, 2, 3, 5, 4).reshape(b, c, g, (h // g) * p, T)
    chunk_states = (xw @ Bc).view(b, c, h, p, n).to(sdt)  # (b, c, h, p, n)

    # 3. Pass the state from chunk to chunk; a loop over chunks keeps memory O(c), not O(c²).
    state = initial_state.to(sdt) if initial_state is not None else x.new_zeros(b, h, p, n, dtype=sdt)
    chunk_decay = torch.exp(dA_cum[..., -1])  # (b, c, h)
    entering = []
    for k in range(c):
        entering.append(state)
        state = state * chunk_decay[:, k, :, None, None] + chunk_states[:, k]
    entering = torch.stack(entering, dim=1)  # (b, c, h, p, n): the state before each chunk

    # 4. What the entering state contributes inside each chunk: decay_from_start(t) · C_t · state.
    S = entering.view(b, c, g, (h // g) * p, n).to(x.dtype)
    y_state = (Cc @ S.transpose(-1, -2)).view(b, c, g, T, h // g, p)  # (b, c, g, T, h/g, p)
    y_state = y_state.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, T, p)
    y = y + y_state * torch.exp(dA_cum)[..., None].to(x.dtype)

    y = y.permute(0, 1, 3, 2, 4).reshape(b, c * T, h, p)[:, :l]
    x = x[:, :l]
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D).to(x.dtype)
    if z is not None:
        y = y * F.silu(z)
    return y, state


def ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, dt_limit=NO_DT_LIMIT):
    """One step of the recurrence.

    state (b, h, p, n), x (b, h, p), dt (b, h) raw, A (h,), B and C (b, g, n).
    Returns y (b, h, p) and the new state; the given state is not modified.
    """
    b, h, p = x.shape
    g, n = B.shape[-2:]
    if cuda_kernels_available(x) and _cuda_state_update is not None:
        new_state = state.clone()
        A_hpn = A[:, None, None].expand(h, p, n).to(torch.float32)
        y = _cuda_state_update(
            new_state, x, dt[..., None].expand(b, h, p),
            A_hpn, B, C,
            D=None if D is None else (D[:, None].expand(h, p) if D.dim() == 1 else D),
            z=z, dt_bias=None if dt_bias is None else dt_bias[:, None].expand(h, p),
            dt_softplus=dt_softplus,
        )
        return y, new_state

    sdt = state_dtype(x.dtype)
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b, h)
    Bh = B.to(sdt).repeat_interleave(h // g, dim=1)  # (b, h, n)
    Ch = C.to(sdt).repeat_interleave(h // g, dim=1)
    decay = torch.exp(dt * A.to(sdt))[..., None, None]  # (b, h, 1, 1)
    new_state = state.to(sdt) * decay + (x.to(sdt) * dt[..., None])[..., None] * Bh[:, :, None, :]
    y = (new_state @ Ch[..., None]).squeeze(-1)  # (b, h, p)
    if D is not None:
        y = y + x.to(sdt) * (D[:, None] if D.dim() == 1 else D).to(sdt)
    if z is not None:
        y = y * F.silu(z.to(sdt))
    return y.to(x.dtype), new_state


def ssd_naive(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, dt_limit=NO_DT_LIMIT,
              initial_state=None):
    """The recurrence token by token (the reference that benchmarks compare against)."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    state = initial_state if initial_state is not None else x.new_zeros(b, h, p, n, dtype=state_dtype(x.dtype))
    ys = []
    for t in range(l):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, None if z is None else z[:, t],
                            dt_bias, dt_softplus, dt_limit)
        ys.append(y)
    return torch.stack(ys, dim=1), state
