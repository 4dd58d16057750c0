"""Tokenizer: a thin wrapper over the `tokenizers` library and its tokenizer.json.

Real checkpoints ship their own tokenizer.json (GPT-NeoX's for Mamba-2). The packaged model uses
a word-level vocabulary built from its training texts, with digits split one by one so that
counts and times ("at 1:23") are spelled digit by digit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

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
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(_HFTokenizer.from_file(str(path)))

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
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always"),  # a word keeps its leading space
        pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    digits = [str(d) for d in range(10)]  # every digit, whatever the texts happen to contain
    tok.train_from_iterator([*texts, " ".join(digits)], trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    return Tokenizer(tok)


def with_phrase_tokens(tokenizer: Tokenizer, phrases) -> Tokenizer:
    """A copy of a word-level tokenizer that also reads and writes each two-word phrase as one token.

    "red star" becomes the single word "redstar" (new ids after the existing ones, which keep
    theirs), so a model looks up a (colour, shape) kind by one token instead of forming the
    conjunction of two. The normalizer joins the words (any spacing, any case), the decoder splits
    them again, so text in and text out read as before.
    """
    data = json.loads(tokenizer.hf.to_str())
    if data["model"]["type"] != "WordLevel":
        raise ValueError("phrase tokens need a word-level tokenizer")
    vocab = data["model"]["vocab"]
    joins = []
    for phrase in phrases:
        words = phrase.lower().split()
        joined = "".join(words)
        joins.append((words, joined))
        vocab.setdefault(WORD_START + joined, len(vocab))
    hf = _HFTokenizer.from_str(json.dumps(data))
    # Join after the tokenizer's own normalizing (lower case), split before its own decoding.
    hf.normalizer = normalizers.Sequence([
        tokenizer.hf.normalizer,
        *(normalizers.Replace(Regex(r"\b" + r"\s+".join(map(re.escape, words)) + r"\b"), joined) for words, joined in joins),
    ])
    hf.decoder = decoders.Sequence([*(decoders.Replace(joined, " ".join(words)) for words, joined in joins), tokenizer.hf.decoder])
    return Tokenizer(hf)


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
        piece, self.text = text[len(self.text):], text
        return piece
