"""The word-level tokenizer and its phrase tokens."""

from ma2mba.tokenizer import build_word_tokenizer, with_phrase_tokens

TEXTS = ["Did a red star appear?", "a blue circle and a red square", "at 1:23"]


def test_phrase_tokens_keep_every_id_and_read_as_before():
    words = build_word_tokenizer(TEXTS)
    joined = with_phrase_tokens(words, ["red star", "blue circle"])
    assert len(joined) == len(words) + 2
    assert all(joined.token_id(t) == i for t, i in words.hf.get_vocab().items())
    for text in ("did a red star appear?", "a blue circle and a red square", "at 1:23"):
        assert joined.decode(joined.encode(text)) == words.decode(words.encode(text)) == text
    ids = joined.encode("Did a RED \t star appear?")  # any case, any spacing
    assert joined.decode(ids) == "did a red star appear?"
    assert len(ids) == len(words.encode("did a red star appear?")) - 1
    assert len(joined.encode("red square")) == 2  # only the listed phrases are joined
    assert joined.encode("bred star") == words.encode("bred star")  # whole words only
