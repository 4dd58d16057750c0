"""The CUDA path (mamba_ssm's Triton kernels) against the pure PyTorch path. Skipped without both."""

import pytest
import torch

from ma2mba import Mamba2Config, Mamba2LM
from ma2mba.engine.ssd import cuda_kernels_available, ssd_scan, ssd_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and cuda_kernels_available(torch.empty(0, device="cuda"))),
        reason="needs CUDA and mamba_ssm",
    ),
]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def inputs(b=2, l=300, h=8, p=64, g=2, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen)
    return dict(
        x=randn(b, l, h, p),
        dt=randn(b, l, h) - 2,
        A=-torch.exp(torch.rand(h, generator=gen) * 2.7),
        B=randn(b, l, g, n),
        C=randn(b, l, g, n),
        D=randn(h),
        dt_bias=randn(h) - 2,
        initial_state=randn(b, h, p, n),
    )


def test_chunk_scan_kernel_matches_pytorch():
    cpu = inputs()
    gpu = {k: v.cuda().requires_grad_() for k, v in cpu.items()}
    y_gpu, final_gpu = ssd_scan(chunk_size=64, **gpu)  # dispatches to mamba_chunk_scan_combined
    cpu = {k: v.clone().requires_grad_() for k, v in cpu.items()}
    y_cpu, final_cpu = ssd_scan(chunk_size=64, **cpu)  # CPU tensors: the pure PyTorch scan
    assert rel_err(y_gpu.cpu(), y_cpu) <= 1e-3
    assert rel_err(final_gpu.cpu(), final_cpu) <= 1e-3
    (y_gpu.sum() + final_gpu.sum()).backward()
    (y_cpu.sum() + final_cpu.sum()).backward()
    for k in cpu:
        assert rel_err(gpu[k].grad.cpu(), cpu[k].grad) <= 1e-2, k


def test_state_update_kernel_matches_pytorch():
    cpu = inputs(l=1)
    state = cpu["initial_state"]
    args = [cpu[k][:, 0] if k in ("x", "dt", "B", "C") else cpu[k] for k in ("x", "dt", "A", "B", "C")]
    y_cpu, new_cpu = ssd_step(state, *args, D=cpu["D"], dt_bias=cpu["dt_bias"])
    y_gpu, new_gpu = ssd_step(state.cuda(), *(a.cuda() for a in args), D=cpu["D"].cuda(), dt_bias=cpu["dt_bias"].cuda())
    assert rel_err(y_gpu.cpu(), y_cpu) <= 1e-4
    assert rel_err(new_gpu.cpu(), new_cpu) <= 1e-4


def test_lm_on_gpu_matches_cpu():
    torch.manual_seed(0)
    lm = Mamba2LM(Mamba2Config(d_model=256, n_layer=2, vocab_size=100, ssm_cfg=dict(d_state=64)))
    ids = torch.randint(0, 100, (2, 200))
    want = lm(ids)
    lm_gpu = lm.cuda()
    got = lm_gpu(ids.cuda())
    assert rel_err(got.logits.cpu(), want.logits) <= 1e-3
    stepped = lm_gpu.step(ids[:, 0].cuda(), lm_gpu.empty_state(2))
    assert rel_err(stepped.logits.cpu(), want.logits[:, 0]) <= 1e-3


def test_training_runs_on_the_gpu_and_resumes_on_the_cpu(tmp_path):
    from ma2mba.packaged.recipe import SMOKE, new_model
    from ma2mba.serving.frames import watch
    from ma2mba.training.evaluate import answer_batch
    from ma2mba.training.trainer import Trainer

    total = sum(s.steps for s in SMOKE)
    gpu = Trainer(tmp_path, SMOKE, new_model(0), device="cuda")
    gpu.run(progress=False, max_steps=total - 1)
    assert gpu.model.device.type == "cuda"
    cpu = Trainer(tmp_path, SMOKE, new_model(0), bf16=False)  # the checkpoint written on the GPU
    assert cpu.model.device.type == "cpu" and cpu.step == gpu.step
    cpu.run(progress=False)
    model = cpu.model.cuda().eval()
    frames = torch.zeros(2, 3, model.vision.cfg.image_size, model.vision.cfg.image_size, 3, dtype=torch.uint8).numpy()
    answers = answer_batch(model, watch(model, frames, range(3)), ["Did a red star appear?"] * 2)
    assert len(answers) == 2 and answers[0] == answers[1]
