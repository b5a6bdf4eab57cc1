import json

import numpy as np
import pytest

from capitu.errors import UserError
from capitu.tokenizer import EOT_ID, BPETokenizer, CharTokenizer, load_tokenizer

SAMPLE = "Não, não! — exclamou ela. “Ação”, coração, pôr-se-á… 1839\n\tfim 😀 日本"


def validation_text(folder):
    """The validation split as text: the tokens between end-of-text markers, decoded."""
    meta = json.loads((folder / "meta.json").read_text())
    return np.fromfile(folder / "val.bin", dtype=meta["dtype"]), load_tokenizer(folder / "tokenizer.json")


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_round_trip_on_a_real_validation_split(kind, prepared_bpe, prepared_char):
    folder = prepared_bpe if kind == "bpe" else prepared_char
    tokens, tokenizer = validation_text(folder)
    assert tokenizer.kind == kind
    documents = []
    for chunk in np.split(tokens, np.flatnonzero(tokens == EOT_ID))[1:]:
        documents.append(tokenizer.decode(chunk[1:]))
    assert len(documents) >= 1 and sum(map(len, documents)) > 1000
    for text in documents:
        assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.encode(text) == tokenizer.encode_batch([text])[0]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_round_trip_of_unseen_characters(kind, prepared_bpe, prepared_char):
    tokenizer = load_tokenizer((prepared_bpe if kind == "bpe" else prepared_char) / "tokenizer.json")
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE


def test_bpe_learns_portuguese_merges_and_reserves_end_of_text():
    texts = ["O coração da nação não tem razão. " * 50, "A canção do ladrão e a ação do irmão. " * 50]
    tokenizer = BPETokenizer.train(texts, vocab_size=400, show_progress=False)
    assert tokenizer.hf.token_to_id("<|endoftext|>") == EOT_ID
    assert len(tokenizer.encode(" coração")) < len(" coração".encode("utf-8"))


def test_bpe_training_writes_no_progress_into_a_file(capfd):
    """HF's progress bar, into a log or a pipe (here pytest's file), is blank lines: it is shown on a terminal only."""
    BPETokenizer.train(["O coração da nação. " * 50] * 4, vocab_size=300, show_progress=True)
    assert capfd.readouterr().out == ""


def test_char_tokenizer_ids_are_the_characters_and_bytes_fall_back():
    tokenizer = CharTokenizer.train(["abcã"])
    assert tokenizer.vocab_size == 257 + 4
    assert tokenizer.encode("cã") == [257 + 2, 257 + 3]
    assert tokenizer.encode("é") == [1 + 0xC3, 1 + 0xA9]  # UTF-8 bytes of é, shifted past end-of-text
    assert tokenizer.decode([0]) == "<|endoftext|>"


def test_save_and_load(tmp_path):
    char = CharTokenizer.train(["olá"])
    char.save(tmp_path / "c.json")
    assert load_tokenizer(tmp_path / "c.json").encode("olá") == char.encode("olá")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load tokenizer"):
        load_tokenizer(tmp_path / "bad.json")


def test_a_bpe_without_end_of_text_is_refused_in_words(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(["Era uma vez"] * 5, trainers.BpeTrainer(vocab_size=270, show_progress=False))
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UserError, match="has no <\\|endoftext\\|> token, which capitu puts before every document"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_bad_vocab_size():
    with pytest.raises(UserError, match="vocab size"):
        BPETokenizer.train(["abc"], vocab_size=10)
