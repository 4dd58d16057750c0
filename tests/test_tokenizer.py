"""The word-level tokenizer of the packaged model."""

from ma2mba.video.tokenizer import EOS, UNK, build_word_tokenizer

TEXTS = ["Did a red star appear?", "a blue circle and a red square", "at 1:23"]


def test_words_round_trip_and_digits_are_spelled_one_by_one():
    tok = build_word_tokenizer(TEXTS)
    for text in ("did a red star appear?", "a blue circle and a red square", "at 1:23"):
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("Did A RED star") == tok.encode("did a red star")  # lower-cased
    assert len(tok.encode("907")) == len(tok.encode("9")) + 2  # one token a digit, each known whatever the texts held
    assert tok.decode(tok.encode("at 9:07")) == "at 9:07"


def test_unknown_words_become_the_unknown_token_and_specials_exist():
    tok = build_word_tokenizer(TEXTS)
    assert tok.encode("a purple hexagon") == [tok.encode("a")[0], tok.token_id(UNK), tok.token_id(UNK)]
    assert tok.eos_id == tok.token_id(EOS) is not None
