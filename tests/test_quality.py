import pytest

from capitu.quality import training_vocabulary, words, writing_numbers


def test_words_keep_accents_and_hyphens():
    assert words("Disse-me ele: — Não há 3 coisas!") == ["disse-me", "ele", "não", "há", "coisas"]


def test_numbers_by_hand():
    numbers = writing_numbers(["o mar o mar o mar", "a casa azul"], {"o", "mar", "a", "casa"})
    # words: o mar o mar o mar | a casa azul -> 9 words, 5 distinct, 8 known
    assert numbers["known_words"] == pytest.approx(8 / 9)
    assert numbers["distinct_1"] == pytest.approx(5 / 9)
    # pairs: (o,mar) x3, (mar,o) x2 | (a,casa), (casa,azul) -> 7 pairs, 4 distinct
    assert numbers["distinct_2"] == pytest.approx(4 / 7)
    # 4-grams of the first: (o mar o mar) x2, (mar o mar o) x1 -> 2 of 3 recur; the second has none
    assert numbers["repeated_4grams"] == pytest.approx(2 / 3)
    assert numbers["mean_words"] == pytest.approx(4.5)
    assert writing_numbers(["x"], None)["known_words"] is None


def test_training_vocabulary_reads_the_train_split(prepared_bpe):
    vocabulary = training_vocabulary(prepared_bpe)
    assert {"que", "não", "de"} <= vocabulary and len(vocabulary) > 1000
    assert training_vocabulary(prepared_bpe / "missing") is None
