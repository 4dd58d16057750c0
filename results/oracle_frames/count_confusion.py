"""What an oracle-lab model answers on 96 fresh 16-s clips, per true answer: truth, n, {answer: n}.

    python results/oracle_frames/count_confusion.py RUN count [--tied]
"""

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

from ma2mba.data import shapeworld  # noqa: E402
from ma2mba.data.batches import prompt_state, states_at_moments  # noqa: E402
from ma2mba.evaluate import answer_batch  # noqa: E402
from ma2mba.model import VideoConfig  # noqa: E402
from ma2mba.tokenizer import Tokenizer  # noqa: E402
from oracle_lab import OracleModel, visible_kinds  # noqa: E402

LENGTH, CLIPS, BATCH = 16, 96, 16

p = argparse.ArgumentParser()
p.add_argument("run", help="an oracle_lab.py output folder")
p.add_argument("kind", help="question kind, e.g. count")
p.add_argument("--tied", action="store_true", help="the run was trained with --tied")
args = p.parse_args()
torch.set_num_threads(1)
ck = torch.load(Path(args.run) / "checkpoint.pt", map_location="cpu", weights_only=True)
model = OracleModel(VideoConfig.from_dict(json.loads(ck["config"])), Tokenizer(HFTokenizer.from_str(ck["tokenizer"])))
model.load_state_dict(ck["model"])
model.eval()
OracleModel.tied = args.tied
confusion = collections.Counter()
with torch.no_grad():
    for start in range(0, CLIPS, BATCH):
        videos = [shapeworld.generate(777_000 + start + i, LENGTH) for i in range(BATCH)]
        visible = torch.from_numpy(np.stack([visible_kinds(v, range(LENGTH)) for v in videos]))
        tokens = model.frame_embeds(model.visual_token(visible), np.arange(LENGTH))
        (state,) = states_at_moments(model, tokens, [LENGTH], prompt_state(model, BATCH))
        asks = [(i, qa) for i, v in enumerate(videos)
                for qa in v.questions(np.random.default_rng(start + i), n=4, kinds=[args.kind])]
        index = torch.tensor([i for i, _ in asks])
        answers = answer_batch(model, state.map(lambda t: t.index_select(0, index)), [qa.question for _, qa in asks])
        confusion.update((qa.answer, a) for (_, qa), a in zip(asks, answers))
for truth in sorted({t for t, _ in confusion}):
    row = {a: n for (t, a), n in sorted(confusion.items()) if t == truth}
    print(truth, sum(row.values()), row)
