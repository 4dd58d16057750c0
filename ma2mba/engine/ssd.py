"""The SSD scan of Mamba-2 ("state space duality", Dao & Gu 2024), in pure PyTorch.

Per head h the recurrence is, for every position t,
    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * x_t ⊗ B_t        # (P, N)
    y_t     = state_t @ C_t + D_h * x_t
with dt_t = softplus(dt_raw_t + dt_bias_h), clamped to dt_limit.

`ssd_scan` evaluates it chunk by chunk: inside a chunk of T positions the map from inputs to
outputs is a masked (T, T) matrix (the "quadratic", attention-like form); between chunks only
the (P, N) state per head is passed on. `ssd_step` is one step of the recurrence for decoding.

Shapes: b batch, l length, h heads, p head dim, g groups (B and C are shared by the k = h/g
heads of a group), n state size, c chunks, T chunk length.

Precision follows mamba_ssm: dt, the cumulative decays, the exponentials and the carried state
are float32 (float64 if the inputs are float64); the matrix products run in the input dtype,
so bf16 autocast speeds them up without touching the state.

Backward is written by hand (`ChunkedScan`): besides its inputs it keeps the states entering
each chunk, the (T, T) decay matrices and the state's share of the output, about three times the
inputs. The Mamba2 mixer runs the scan under activation checkpointing, so these live only while
one layer's backward runs.

On CUDA, when mamba_ssm is importable, both functions hand the same call to its Triton kernels.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

try:  # the CUDA fast path is optional
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update as _cuda_state_update
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _cuda_chunk_scan
except Exception:  # ImportError, or a broken CUDA install
    _cuda_chunk_scan = None
    _cuda_state_update = None

NO_DT_LIMIT = (0.0, float("inf"))

# On CPU, chunks longer than this only add work: the (T, T) products and decay matrices grow with
# T while the state products do not, and batched (T, T) products are slow here. The result does
# not depend on the chunk length (up to rounding).
CPU_MAX_CHUNK = 64


def cuda_kernels_available(t: torch.Tensor) -> bool:
    return t.is_cuda and _cuda_chunk_scan is not None


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent state is carried in: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def gradient_will_flow(*tensors) -> bool:
    """Whether autograd will differentiate an op on these (None allowed): the custom Functions
    then keep what their backward reads, and otherwise skip those buffers."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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


@contextlib.contextmanager
def one_thread():
    """For loops of small sequential updates: splitting each across threads costs more than it
    saves, and on a busy machine every split waits for a descheduled thread (~40x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    chunk_size,
    D=None,
    z=None,
    dt_bias=None,
    dt_softplus=True,
    dt_limit=NO_DT_LIMIT,
    initial_state=None,
):
    """Chunked SSD scan.

    x (b, l, h, p), dt (b, l, h) raw, A (h,) negative, B and C (b, l, g, n),
    D (h,) or (h, p), z (b, l, h, p) gates the output with silu(z),
    initial_state (b, h, p, n) or None.
    Returns y (b, l, h, p) in x's dtype and the final state (b, h, p, n) in the state dtype.
    """
    if cuda_kernels_available(x):
        y, final = _cuda_chunk_scan(
            x,
            dt,
            A,
            B,
            C,
            chunk_size,
            D=D,
            z=z,
            dt_bias=dt_bias,
            initial_states=initial_state,
            dt_softplus=dt_softplus,
            dt_limit=tuple(dt_limit),
            return_final_states=True,
        )
        return y, final

    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b, l, h)
    for_backward = gradient_will_flow(x, dt, A, B, C, initial_state, D)
    y, final = ChunkedScan.apply(x, dt, A, B, C, min(chunk_size, CPU_MAX_CHUNK), initial_state, D, for_backward)
    if z is not None:
        y = y * F.silu(z)
    return y, final


class _Chunks:
    """The scan's inputs cut into chunks, and what both passes derive from them.

    Tensors are position-major, (b, c, T, h, …), like the inputs; `grouped` gives the
    (b, c, g, T, k·p) view in which one matrix product serves all heads of a group.
    """

    def __init__(self, x, dt, A, B, C, chunk_size):
        b, l, h, p = x.shape
        g, n = B.shape[-2:]
        self.l, self.h, self.p, self.g, self.n = l, h, p, g, n
        self.mm = x.dtype  # the dtype of the matrix products
        self.T = T = min(chunk_size, l)  # a short call is one chunk of its own length, not a padded one
        pad = (-l) % T
        if pad:  # dt = 0 on padding: no decay and no input, so the final state is unchanged
            x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
            dt = F.pad(dt, (0, 0, 0, pad))
        self.c = c = (l + pad) // T
        self.x = x.view(b, c, T, h, p)
        self.dt = dt.view(b, c, T, h)  # state dtype
        self.B = B.view(b, c, T, g, n).transpose(2, 3)  # (b, c, g, T, n)
        self.C = C.view(b, c, T, g, n).transpose(2, 3)
        self.xdt = (self.x * self.dt[..., None]).to(self.mm)  # (b, c, T, h, p)
        self.cum = (self.dt * A.to(self.dt.dtype)).cumsum(2)  # (b, c, T, h): log-decay from the chunk start
        self.to_end = torch.exp(self.cum[:, :, -1:] - self.cum)  # (b, c, T, h): decay to the chunk end
        self.chunk_decay = torch.exp(self.cum[:, :, -1])  # (b, c, h)
        self.upper = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)

    def grouped(self, t):
        """(b, c, T, h, p) -> (b, c, g, T, k·p)."""
        b, c, T = t.shape[:3]
        return t.reshape(b, c, T, self.g, -1).transpose(2, 3)

    def ungrouped(self, t):
        """(b, c, g, T, k·p) -> (b, c, T, h, p)."""
        b, c, _, T = t.shape[:4]
        return t.transpose(2, 3).reshape(b, c, T, self.h, self.p)

    def heads_first(self, t):
        """(b, c, T, h, p) -> (b, c, h, T, p) for the per-head (T, T) products."""
        return t.permute(0, 1, 3, 2, 4)

    def each_chunk(self):
        """(batch index, chunk index) of every chunk.

        The (T, T) work runs one chunk at a time: a chunk's (h, T, T) matrices (~400 KB at the
        mamba2-130m shape) stay in cache through its few steps, where whole-tensor steps would each
        stream 12 MB from memory; and a chunk's heads-first view of a position-major tensor is a
        strided batch that bmm reads as it is. (Groups of several chunks were faster with few heads,
        but made a layer's working memory flatten out past the group's length, which the
        checkpointing planner's linear model then over-predicted by more than 15%.)
        """
        return [(i, j) for i in range(self.x.shape[0]) for j in range(self.c)]

    def decay_matrix(self, i, j, out):
        """(h, T, T) of chunk j in batch i, into out: exp(cum_s - cum_t) for s >= t, 0 above the diagonal.

        A difference of two cumulative sums inside one chunk, in the state dtype (as mamba_ssm's
        kernels compute it); the chunk is short, so the sums stay small.
        """
        cum = self.cum[i, j].t()  # (h, T)
        torch.sub(cum[:, :, None], cum[:, None, :], out=out)
        return out.masked_fill_(self.upper, -torch.inf).exp_()

    def mix_heads(self, per_head, per_group):
        """per_head (h, T, T) * per_group (g, T, T), each group's matrix applied to its heads."""
        h, T, _ = per_head.shape
        return (per_head.view(self.g, h // self.g, T, T) * per_group[:, None]).view(h, T, T)

    def sum_heads(self, per_head, out):
        """(h, T, T) -> (g, T, T) into out, summing the heads of each group."""
        h, T, _ = per_head.shape
        return torch.sum(per_head.view(self.g, h // self.g, T, T), 1, out=out)

    def chunk_states(self, out):
        """(b, c, h, p, n) into out: the state each chunk builds from zero, Σ_t to_end_t · xdt_t ⊗ B_t."""
        xw = self.xdt * self.to_end[..., None].to(self.mm)
        _matmul_into(self.grouped(xw).transpose(-1, -2), self.B, out.view(*out.shape[:2], self.g, -1, self.n))

    def entering_states(self, initial_state):
        """(b, c, h, p, n) states before each chunk, and the final state.

        One buffer of c + 1 states: the initial state, then each chunk's own state, which a loop
        over the chunks turns in place into the state leaving it (memory O(c), and no second
        buffer to fault in)."""
        b, c = self.x.shape[:2]
        states = torch.empty(b, c + 1, self.h, self.p, self.n, dtype=self.dt.dtype, device=self.x.device)
        states[:, 0] = initial_state if initial_state is not None else 0
        self.chunk_states(out=states[:, 1:])
        with one_thread():
            for k in range(c):
                states[:, k + 1].addcmul_(states[:, k], self.chunk_decay[:, k, :, None, None])
        return states[:, :-1], states[:, -1].clone()  # a view would keep the whole buffer alive

    def states_grouped(self, states):
        """(b, c, h, p, n) -> (b, c, g, k·p, n) in the dtype of the matrix products."""
        b, c = states.shape[:2]
        return states.to(self.mm).view(b, c, self.g, -1, self.n)

    def pad_like_input(self, t):
        """(b, l, h, p) -> (b, c, T, h, p), zero-padded."""
        pad = self.c * self.T - self.l
        return F.pad(t, (0, 0, 0, 0, 0, pad)).view(*self.x.shape) if pad else t.view(*self.x.shape)

    def unpad(self, t):
        """(b, c, T, …) -> (b, l, …)."""
        return t.flatten(1, 2)[:, : self.l]


class ChunkedScan(torch.autograd.Function):
    """(x, dt, A, B, C, chunk_size, initial_state, D, for_backward) -> y (b, l, h, p), final state (b, h, p, n).

    dt is already discretised (state dtype). D (h,) or (h, p) or None is the skip y += D·x, added
    here in place (a separate op would cost a new tensor and two passes). No gate: `ssd_scan` adds it.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk_size, initial_state, D, for_backward=True):
        with torch.autocast(x.device.type, enabled=False):
            ch = _Chunks(x, dt, A, B, C, chunk_size)
            entering, final = ch.entering_states(initial_state)  # (b, c, h, p, n)

            # Inside each chunk: y_i = Σ_{j<=i} (C_i·B_j) exp(cum_i - cum_j) xdt_j, the quadratic form.
            CB = (ch.C @ ch.B.transpose(-1, -2)).to(ch.dt.dtype)  # (b, c, g, T, T)
            # The decay matrices: all kept for backward, or, when none will run, one chunk's in cache.
            L = torch.empty(*(CB.shape[:2] if for_backward else ()), ch.h, ch.T, ch.T, dtype=CB.dtype, device=CB.device)
            y_intra = torch.empty(*CB.shape[:2], ch.h, ch.T, ch.p, dtype=ch.mm, device=CB.device)
            xdt_h = ch.heads_first(ch.xdt)  # (b, c, h, T, p)
            for i, j in ch.each_chunk():
                M = ch.mix_heads(ch.decay_matrix(i, j, out=L[i, j] if for_backward else L), CB[i, j])  # (h, T, T)
                torch.bmm(M.to(ch.mm), xdt_h[i, j], out=y_intra[i, j])

            # What the entering state contributes: exp(cum_i) · state @ C_i (y_off is state @ C_i).
            y_off = ch.ungrouped(ch.C @ ch.states_grouped(entering).transpose(-1, -2))  # (b, c, T, h, p)
            y = torch.addcmul(
                ch.heads_first(y_intra), y_off, torch.exp(ch.cum)[..., None].to(ch.mm), out=torch.empty_like(y_off)
            )  # position-major, like the input
            if D is not None:
                y.addcmul_(ch.x, _skip_weight(D, ch.mm))
        # Backward needs these again. The model runs the scan under activation checkpointing, so
        # they live only while one layer's backward runs; the inputs are all it keeps longer.
        ctx.save_for_backward(x, dt, A, B, C, initial_state, D, entering, L, CB, y_off)
        ctx.chunk_size = chunk_size
        return ch.unpad(y), final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, initial_state, D, entering, L, CB, y_off = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            ch = _Chunks(x, dt, A, B, C, ctx.chunk_size)
            sdt, mm = ch.dt.dtype, ch.mm
            dy = ch.pad_like_input(dy.to(mm))  # (b, c, T, h, p)
            dcum = torch.zeros_like(ch.cum)  # gradient w.r.t. cum, (b, c, T, h)

            # Intra-chunk form, with M = CB ∘ L (L the decay matrix).
            dy_h, xdt_h = ch.heads_first(dy), ch.heads_first(ch.xdt)  # (b, c, h, T, p)
            dCB = torch.empty_like(CB)  # (b, c, g, T, T)
            dxdt_intra = torch.empty_like(y_off).permute(0, 1, 3, 2, 4)  # (b, c, h, T, p), position-major memory
            for i, j in ch.each_chunk():
                dML = torch.bmm(dy_h[i, j], xdt_h[i, j].transpose(-1, -2)).to(sdt).mul_(L[i, j])  # dM ∘ L
                ch.sum_heads(dML, out=dCB[i, j])
                M = ch.mix_heads(L[i, j], CB[i, j])
                torch.bmm(M.to(mm).transpose(-1, -2), dy_h[i, j], out=dxdt_intra[i, j])
                E = ch.mix_heads(dML, CB[i, j])  # dM ∘ M: d/d(cum_s - cum_t)
                dcum[i, j] += (E.sum(-1) - E.sum(-2)).t()
            del L, CB
            dCB = dCB.to(mm)
            dC = dCB @ ch.B
            dB = dCB.transpose(-1, -2) @ ch.C
            del dCB

            # The elementwise work below runs in the state dtype on tensors converted once each: under
            # bf16, mixed-dtype products and repeated conversions cost more than the arithmetic.
            # Sums over the head dim are vecdots (faster here than a product and a sum).
            dy32, x32 = dy.to(sdt), ch.x.to(sdt)

            # The entering state's contribution exp(cum_i) · y_off_i, y_off_i = state @ C_i.
            exp_cum = torch.exp(ch.cum)  # (b, c, T, h)
            dye = dy * exp_cum[..., None].to(mm)  # (b, c, T, h, p), for the products
            dC += ch.grouped(dye) @ ch.states_grouped(entering)
            dcum += torch.linalg.vecdot(dy32, y_off.to(sdt)) * exp_cum

            # Gradients w.r.t. the states, walking the chunks backwards, in one buffer of c + 1:
            # d_states[:, k] is the gradient of the state entering chunk k (so of the one leaving
            # chunk k - 1), d_states[:, c] that of the final state. It starts as Σ_i exp(cum_i) dy_i ⊗ C_i,
            # each chunk's own share, and the loop adds what flows back through the decays.
            b, c = x.shape[0], ch.c
            d_states = torch.empty(b, c + 1, ch.h, ch.p, ch.n, dtype=sdt, device=x.device)
            _matmul_into(ch.grouped(dye).transpose(-1, -2), ch.C, d_states[:, :-1].view(b, c, ch.g, -1, ch.n))
            del dye
            d_states[:, -1] = dfinal if dfinal is not None else 0
            # state_leaving = chunk_decay · state_entering + chunk_state, so chunk_decay's gradient is
            # d_leaving · state_entering: taken in the loop, while d_leaving is still in cache.
            d_decay = torch.empty_like(ch.chunk_decay)  # (b, c, h)
            with one_thread():
                for k in range(c - 1, -1, -1):
                    torch.linalg.vecdot(d_states[:, k + 1].flatten(-2), entering[:, k].flatten(-2), out=d_decay[:, k])
                    d_states[:, k].addcmul_(d_states[:, k + 1], ch.chunk_decay[:, k, :, None, None])
            d_leaving = d_states[:, 1:]
            d_initial = d_states[:, 0].clone() if initial_state is not None else None
            dcum[:, :, -1] += ch.chunk_decay * d_decay

            # chunk_state = Σ_j to_end_j · xdt_j ⊗ B_j
            G = ch.states_grouped(d_leaving)  # (b, c, g, k·p, n)
            GB = ch.ungrouped(ch.B @ G.transpose(-1, -2)).to(sdt)  # (b, c, T, h, p): d_leaving @ B_j
            to_end = ch.to_end[..., None]
            # out= keeps dxdt position-major, as dx must be (the heads-first layout would need a copy)
            dxdt = torch.addcmul(ch.heads_first(dxdt_intra).to(sdt), GB, to_end, out=torch.empty_like(GB))
            del dxdt_intra
            d_to_end = torch.linalg.vecdot(GB, ch.xdt.to(sdt)).mul_(ch.to_end)  # (b, c, T, h), times to_end for exp'
            del GB
            dcum[:, :, -1] += d_to_end.sum(2)
            dcum -= d_to_end
            dB += ch.grouped(ch.xdt * to_end.to(mm)) @ G

            # cum = cumsum(dt·A) within the chunk, and xdt = x·dt.
            dlog = dcum.flip(2).cumsum(2).flip(2)  # d(dt·A), (b, c, T, h)
            ddt = dlog * A.to(sdt) + torch.linalg.vecdot(dxdt, x32)
            dA = (dlog * ch.dt).sum((0, 1, 2)).to(A.dtype)
            dx = dxdt.mul_(ch.dt[..., None])
            dD = None
            if D is not None:
                dx.addcmul_(dy32, _skip_weight(D, sdt))
                if D.dim() == 1:
                    dD = torch.linalg.vecdot(dy32, x32).sum((0, 1, 2)).to(D.dtype)  # (h,)
                else:
                    dD = (dy32 * x32).sum((0, 1, 2)).to(D.dtype)  # (h, p)

            dB = dB.transpose(2, 3).reshape(b, -1, ch.g, ch.n)
            dC = dC.transpose(2, 3).reshape(b, -1, ch.g, ch.n)
            grads = (
                ch.unpad(dx).to(x.dtype),
                ch.unpad(ddt).to(dt.dtype),
                dA,
                dB[:, : ch.l].to(B.dtype),
                dC[:, : ch.l].to(C.dtype),
                None,
                None if d_initial is None else d_initial.to(initial_state.dtype),
                dD,
                None,
            )
        return grads


def _matmul_into(a, b, out):
    """out = a @ b; a product in another dtype than out's is converted into it."""
    if out.dtype == a.dtype:
        torch.matmul(a, b, out=out)
    else:
        out.copy_(a @ b)


def _skip_weight(D, dtype):
    """D (h,) or (h, p) -> a factor that broadcasts over (…, h, p)."""
    return (D[:, None] if D.dim() == 1 else D).to(dtype)


def ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, dt_limit=NO_DT_LIMIT):
    """One step of the recurrence.

    state (b, h, p, n), x (b, h, p), dt (b, h) raw, A (h,), B and C (b, g, n).
    Returns y (b, h, p) and the new state; the given state is not modified.
    """
    b, h, p = x.shape
    g, n = B.shape[-2:]
    if cuda_kernels_available(x) and _cuda_state_update is not None and tuple(dt_limit) == NO_DT_LIMIT:
        new_state = state.clone()
        A_hpn = A[:, None, None].expand(h, p, n).to(torch.float32)
        y = _cuda_state_update(
            new_state,
            x,
            dt[..., None].expand(b, h, p),
            A_hpn,
            B,
            C,
            D=None if D is None else (D[:, None].expand(h, p) if D.dim() == 1 else D),
            z=z,
            dt_bias=None if dt_bias is None else dt_bias[:, None].expand(h, p),
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


def ssd_naive(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=True, dt_limit=NO_DT_LIMIT, initial_state=None):
    """The recurrence token by token (the reference that benchmarks compare against)."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    state = initial_state if initial_state is not None else x.new_zeros(b, h, p, n, dtype=state_dtype(x.dtype))
    ys = []
    for t in range(l):
        y, state = ssd_step(
            state,
            x[:, t],
            dt[:, t],
            A,
            B[:, t],
            C[:, t],
            D,
            None if z is None else z[:, t],
            dt_bias,
            dt_softplus,
            dt_limit,
        )
        ys.append(y)
    return torch.stack(ys, dim=1), state
