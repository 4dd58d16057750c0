"""The smallest "did K appear?" task, straight into the packaged LM's architecture (with MLPs): 16 frames, each
an oracle embedding of one of the clip's kinds, then a question; the answer (yes/no) is read after the
last question token. 600 steps of 64 clips, AdamW 1e-3. Flags (combine freely):
  markers  a time-marker token before each frame, as the packaged model has
  words    the kind is asked as two words, colour then shape, and the answer comes after EOS, ASSISTANT
  long     the kind is one token inside a 6-token question, then EOS, ASSISTANT
  conv8    the mixers' causal convolution spans 8 tokens instead of 4
  grow8    it spans 4 for the first 300 steps, then is widened to 8 (Mamba2LM.widen_conv), fresh optimiser
    python results/oracle_frames/exists_lab.py words > exists_words.txt
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch, numpy as np
from ma2mba.config import Mamba2Config
from ma2mba.lm import Mamba2LM
from ma2mba.model import time_features
torch.set_num_threads(1); torch.manual_seed(0)
flags = set(sys.argv[1:])
cfg = Mamba2Config(d_model=192, n_layer=6, vocab_size=64, pad_vocab_size_multiple=8, d_intermediate=384,
                   ssm_cfg=dict(d_state=32, headdim=48, chunk_size=64, d_conv=8 if "conv8" in flags else 4))
lm = Mamba2LM(cfg)
oracle = torch.nn.Linear(28, 192); tembed = torch.nn.Linear(42, 192)
def optimizer():
    return torch.optim.AdamW(list(lm.parameters()) + list(oracle.parameters()) + list(tembed.parameters()), lr=1e-3,
                             betas=(0.9, 0.95), weight_decay=0.1)
opt = optimizer()
rng = np.random.default_rng(0); B, N = 64, 16
YES, NO, Q, EOS, AST = 40, 41, 42, 43, 44
for step in range(600):
    if step == 300 and "grow8" in flags:
        lm.widen_conv(8)
        opt = optimizer()
    present = rng.integers(0, 28, (B, 6))
    frames = present[np.arange(B)[:, None], rng.integers(0, 6, (B, N))]
    ask_present = rng.random(B) < 0.5
    absent = np.array([rng.choice(np.setdiff1d(np.arange(28), frames[b])) for b in range(B)])
    query = np.where(ask_present, frames[np.arange(B), rng.integers(0, N, B)], absent)
    target = torch.tensor(np.where(ask_present, YES, NO))
    vis = oracle(torch.nn.functional.one_hot(torch.from_numpy(frames), 28).float())  # (B, N, d)
    if "markers" in flags:
        mk = tembed(time_features(np.arange(N)))[None].expand(B, N, 192)
        vis = torch.stack([mk, vis], 2).flatten(1, 2)
    if "words" in flags:  # colour word 28-34, shape word 35-38 (kind k is colour k // 4, shape k % 4)
        qids = np.stack([np.full(B, Q), 28 + query // 4, 35 + query % 4, np.full(B, EOS), np.full(B, AST)], 1)
    elif "long" in flags:  # "did a K appear ?" EOS ASSISTANT: the answer comes 5 tokens after the kind
        qids = np.stack([np.full(B, Q), np.full(B, 50), np.full(B, 51), query, np.full(B, 52), np.full(B, 53), np.full(B, EOS), np.full(B, AST)], 1)
    else:
        qids = np.stack([np.full(B, Q), query], 1)
    q = lm.embed(torch.from_numpy(qids))
    logits = lm(inputs_embeds=torch.cat([vis, q], 1)).logits[:, -1]
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0); opt.step()
    if step % 50 == 0:
        print(step, round(loss.item(), 3), round((logits.argmax(-1) == target).float().mean().item(), 3), flush=True)
