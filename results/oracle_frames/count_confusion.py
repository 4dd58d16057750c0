"""What an oracle-lab model answers to count (or any) questions on 96 fresh 16-s clips: truth -> {answer: n}.
    python results/oracle_frames/count_confusion.py RUN count
"""
import sys, json, collections, numpy as np, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracle_lab as O
from ma2mba import train
from ma2mba.data import shapeworld
from ma2mba.evaluate import answer_batch
from ma2mba.data.batches import prompt_state, states_at_moments
from tokenizers import Tokenizer as HF
from ma2mba.tokenizer import Tokenizer
from ma2mba.model import VideoConfig
torch.set_num_threads(1)
ck = torch.load(sys.argv[1] + "/checkpoint.pt", map_location="cpu", weights_only=False)
sd = ck["model"]
if "sym.weight" in sd: sd["oracle.weight"] = sd.pop("sym.weight"); sd["oracle.bias"] = sd.pop("sym.bias")
m = O.OracleModel(VideoConfig.from_dict(json.loads(ck["config"])), Tokenizer(HF.from_str(ck["tokenizer"])))
m.load_state_dict(sd); m.eval()
O.OracleModel.tied = len(sys.argv) > 3
conf = collections.Counter()
kind = sys.argv[2]
with torch.no_grad():
    for s in range(0, 96, 16):
        vids = [shapeworld.generate(777_000 + s + i, 16) for i in range(16)]
        vis = np.stack([O.OracleTrainer._render(None, v, range(16), None) for v in vids])
        tokens = m.frame_embeds(m.visual_token(torch.from_numpy(vis)), np.arange(16))
        st = states_at_moments(m, tokens, [16], prompt_state(m, 16))[0]
        qs = [(i, qa) for i, v in enumerate(vids) for qa in v.questions(np.random.default_rng(i + s), n=4, kinds=[kind])]
        idx = torch.tensor([i for i, _ in qs])
        pred = answer_batch(m, st.map(lambda t: t.index_select(0, idx)), [qa.question for _, qa in qs])
        for (_, qa), p in zip(qs, pred): conf[(qa.answer, p)] += 1
tot = collections.Counter()
for (a, p), n in conf.items(): tot[a] += n
for a in sorted(tot): print(a, tot[a], {p: n for (aa, p), n in sorted(conf.items()) if aa == a})
