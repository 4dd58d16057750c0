import torch

from ma2mba import Mamba2Config, Mamba2LM


def test_split_state_matches_one_call():
    torch.manual_seed(0)
    cfg = Mamba2Config(d_model=32, n_layer=2, vocab_size=50, ssm_cfg=dict(d_state=8, headdim=8, chunk_size=4))
    lm = Mamba2LM(cfg).double()
    x = torch.randint(0, 50, (2, 11))
    full = lm(x)
    a = lm(x[:, :5])
    b = lm(x[:, 5:], state=a.state)
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), full.logits, rtol=1e-10, atol=1e-12)
