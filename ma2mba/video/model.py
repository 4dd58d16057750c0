"""VideoMa2mba: frames -> vision encoder -> projector -> Mamba-2 LM, with the paper's chat template.

Token stream (the paper's template; the video comes before the question so the state must keep
whatever may be asked later):

    <|system|>You are a helpful assistant.<|endoftext|><|user|>
    [time 0:00][frame 0 tokens] [time 0:01][frame 1 tokens] …
    question<|endoftext|><|assistant|>answer<|endoftext|><|user|>question …

Each frame is preceded by one time-marker token (time_markers.py; our addition to the paper).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.config import Mamba2Config
from ..engine.lm import Mamba2LM
from ..engine.transformer import ARCHITECTURE, TransformerConfig, TransformerLM
from ..hub import ModelFileError, ModelNotFoundError, find_weights, load_checked, read_weights, resolve_model_dir
from .time_markers import TimeMarker
from .tokenizer import ASSISTANT, EOS, SYSTEM, USER, QuestionTooLongError, Tokenizer
from .vision import VisionConfig, make_frame_encoder

MODEL_TYPE = "video_ma2mba"
IGNORE = -100  # label of positions without a loss
MAX_QUESTION_CHARS = 500  # and at most VideoConfig.max_question_tokens tokens


@dataclass
class VideoConfig:
    lm: Mamba2Config | TransformerConfig = field(default_factory=Mamba2Config)  # the Transformer: a baseline
    vision: VisionConfig = field(default_factory=VisionConfig)
    system_prompt: str = "You are a helpful assistant."
    max_question_tokens: int = 64

    def to_dict(self) -> dict:
        return {
            "model_type": MODEL_TYPE,
            "lm": self.lm.to_dict(),
            "vision": self.vision.to_dict(),
            "system_prompt": self.system_prompt,
            "max_question_tokens": self.max_question_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict) -> VideoConfig:
        if d.get("model_type") != MODEL_TYPE:
            raise ValueError(f"config.json has model_type={d.get('model_type')!r}, expected {MODEL_TYPE!r}")
        lm = TransformerConfig if d["lm"].get("architecture") == ARCHITECTURE else Mamba2Config
        return cls(
            lm=lm.from_dict(d["lm"]),
            vision=VisionConfig.from_dict(d["vision"]),
            system_prompt=d.get("system_prompt", cls.system_prompt),
            max_question_tokens=d.get("max_question_tokens", cls.max_question_tokens),
        )


class Projector(nn.Sequential):
    """The paper's 2-layer GELU MLP from vision features to the LM's width."""

    def __init__(self, d_in: int, d_model: int):
        super().__init__(nn.Linear(d_in, d_model), nn.GELU(), nn.Linear(d_model, d_model))


class VideoMa2mba(nn.Module):
    def __init__(self, config: VideoConfig, tokenizer: Tokenizer):
        super().__init__()
        if len(tokenizer) > config.lm.padded_vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the LM only {config.lm.padded_vocab_size}")
        self.config = config
        self.tokenizer = tokenizer
        self.vision = make_frame_encoder(config.vision)
        self.projector = Projector(self.vision.out_dim, config.lm.d_model)
        self.time_embed = TimeMarker(config.lm.d_model)
        self.lm = TransformerLM(config.lm) if isinstance(config.lm, TransformerConfig) else Mamba2LM(config.lm)

    @property
    def device(self):
        return self.lm.lm_head.weight.device

    @property
    def tokens_per_frame(self) -> int:
        return 1 + self.vision.tokens_per_frame  # the time marker and the frame's visual tokens

    # --- embeddings ---
    def frame_embeds(self, visual: torch.Tensor, times) -> torch.Tensor:
        """visual (..., N, k, d) and times (N,) or (..., N) -> (..., N, 1 + k, d): time marker, then the frame."""
        lead = visual.shape[:-2]
        times = np.broadcast_to(np.asarray(times, dtype=np.float64), lead).reshape(-1)
        marker = self.time_embed(times).to(visual.dtype)  # (prod(lead), d)
        return torch.cat([marker.view(*lead, 1, -1), visual], dim=-2)

    def embed_ids(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.lm.embed(ids)

    # --- chat template ---
    def prompt_ids(self) -> list[int]:
        t = self.tokenizer
        return [t.token_id(SYSTEM), *t.encode(self.config.system_prompt), t.token_id(EOS), t.token_id(USER)]

    def question_ids(self, question: str) -> list[int]:
        """The question's tokens in the template, or QuestionTooLongError: the one check of a question's
        length, for the library, the CLI, the Space and its API alike."""
        question = question.strip()
        if len(question) > MAX_QUESTION_CHARS:  # before tokenizing: a pasted page costs nothing to refuse
            raise QuestionTooLongError(
                f"The question is {len(question):,} characters long; the limit is {MAX_QUESTION_CHARS}. "
                "Ask a shorter question."
            )
        ids = self.tokenizer.encode(question)
        if not ids:
            raise QuestionTooLongError("The question is empty. Type a question about the video.")
        if len(ids) > self.config.max_question_tokens:
            raise QuestionTooLongError(
                f"The question is {len(ids)} tokens long; the limit is {self.config.max_question_tokens}. "
                "Ask a shorter question."
            )
        return [*ids, self.tokenizer.token_id(EOS), self.tokenizer.token_id(ASSISTANT)]

    def answer_ids(self, answer: str) -> list[int]:
        return [*self.tokenizer.encode(answer), self.tokenizer.token_id(EOS)]

    def next_turn_ids(self) -> list[int]:
        return [self.tokenizer.token_id(USER)]

    # --- training ---
    def answer_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labelled positions; the LM head runs only there.

        hidden (b, l, d) are the LM's outputs, labels (b, l) the next token at each position or IGNORE.
        """
        keep = labels != IGNORE
        logits = self.lm.lm_head(hidden[keep])  # (n_labels, vocab)
        return F.cross_entropy(logits.float(), labels[keep])

    # --- inference ---
    def start_session(self, **kwargs):
        from ..serving.session import StreamingSession  # serving sits above the model; only this call reaches up

        return StreamingSession(self, **kwargs)

    # --- folders ---
    def save_pretrained(self, folder, model_card: str | None = None) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config
        if config.vision.kind == "clip":  # store the tower's architecture so loading needs no download
            vision = dataclasses.replace(config.vision, clip_config=self.vision.clip.config.to_dict())
            config = dataclasses.replace(config, vision=vision)
        (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.lm.tie_embeddings:
            tensors.pop("lm.lm_head.weight")
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        self.tokenizer.save(folder / "tokenizer.json")
        if model_card is not None:
            (folder / "README.md").write_text(model_card)

    @classmethod
    def from_pretrained(cls, name_or_path, device="cpu") -> VideoMa2mba:
        """Load a model folder; every missing, damaged or mismatched file raises ModelNotFoundError (or its
        subclass ModelFileError) with a sentence that names the file and what is wrong with it."""
        folder = resolve_model_dir(name_or_path)
        try:
            config = VideoConfig.from_dict(json.loads((folder / "config.json").read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ModelFileError(f"{folder / 'config.json'} is not a Video-Ma²mba config: {e}") from e
        if not (folder / "tokenizer.json").is_file():
            raise ModelNotFoundError(f"{folder} has no tokenizer.json.")
        try:
            tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
            model = cls(config, tokenizer)
        except Exception as e:  # the tokenizers library raises its own exception type for a bad file
            raise ModelFileError(f"{folder / 'tokenizer.json'} does not fit {folder / 'config.json'}: {e}") from e
        weights = find_weights(folder)
        state = read_weights(weights)
        if config.lm.tie_embeddings and "lm.backbone.embedding.weight" in state:
            state["lm.lm_head.weight"] = state["lm.backbone.embedding.weight"]
        load_checked(model, state, weights)
        return model.to(device).eval()
