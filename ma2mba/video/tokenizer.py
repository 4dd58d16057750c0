"""Tokenizer: a thin wrapper over the `tokenizers` library and its tokenizer.json.

Real checkpoints ship their own tokenizer.json (GPT-NeoX's for Mamba-2). The packaged model uses
a word-level vocabulary built from its training texts, with digits split one by one so that
counts and times ("at 1:23") are spelled digit by digit.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

EOS = "<|endoftext|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
UNK = "<|unk|>"
SPECIAL_TOKENS = (EOS, UNK, SYSTEM, USER, ASSISTANT)
WORD_START = "▁"  # Metaspace's mark of a word's leading space: every word-level token starts with it


class QuestionTooLongError(ValueError):
    """A question longer than the model accepts."""


class Tokenizer:
    def __init__(self, hf_tokenizer: _HFTokenizer):
        self.hf = hf_tokenizer
        missing = [t for t in (EOS, SYSTEM, USER, ASSISTANT) if hf_tokenizer.token_to_id(t) is None]
        if missing:  # e.g. a plain GPT-NeoX tokenizer: add the chat-template tokens it lacks
            hf_tokenizer.add_special_tokens(missing)
        self.eos_id = self.hf.token_to_id(EOS)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        return cls(_HFTokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, text: str) -> Tokenizer:
        return cls(_HFTokenizer.from_str(text))

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def __len__(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)

    def token_id(self, token: str) -> int:
        return self.hf.token_to_id(token)


def build_word_tokenizer(texts) -> Tokenizer:
    """A word-level tokenizer whose vocabulary is every word, punctuation mark and digit in `texts`."""
    tok = _HFTokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always"),  # a word keeps its leading space
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    digits = [str(d) for d in range(10)]  # every digit, whatever the texts happen to contain
    tok.train_from_iterator([*texts, " ".join(digits)], trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    return Tokenizer(tok)


class StreamDecoder:
    """Turns a stream of token ids into a stream of text pieces (decoding the whole prefix each time
    keeps multi-token characters and word spacing right)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        piece, self.text = text[len(self.text) :], text
        return piece
