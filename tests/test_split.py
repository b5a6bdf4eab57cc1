import pytest

from capitu.data.dedup import Document
from capitu.data.split import assign_splits, count_leaks
from capitu.errors import UserError


def make_documents(n):
    return [Document(f"doc{i:03d}", f"Documento número {i}. " * (10 + i), "0" * 64, 0) for i in range(n)]


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    def splits(seed):
        documents = make_documents(60)
        assign_splits(documents, seed, 0.05, 0.05)
        return {d.name: d.split for d in documents}

    assert splits(1) == splits(1)
    assert splits(1) != splits(2)


def test_split_fractions_by_bytes_and_every_split_non_empty():
    documents = make_documents(200)
    assign_splits(documents, 0, 0.1, 0.05)
    total = sum(len(d.text.encode()) for d in documents)
    share = {s: sum(len(d.text.encode()) for d in documents if d.split == s) / total for s in ("train", "val", "test")}
    biggest = max(len(d.text.encode()) for d in documents) / total
    assert 0.1 - biggest <= share["val"] <= 0.1
    assert 0.05 - biggest <= share["test"] <= 0.05
    three = make_documents(3)
    assign_splits(three, 0, 0.05, 0.05)
    assert sorted(d.split for d in three) == ["test", "train", "val"]
    assert max(three, key=lambda d: len(d.text)).split == "train"  # the smallest go to val and test


def test_removed_documents_get_no_split_and_too_few_is_an_error():
    documents = make_documents(5)
    documents[0].removed = "duplicate"
    assign_splits(documents, 0, 0.05, 0.05)
    assert documents[0].split == ""
    with pytest.raises(UserError, match="at least 3"):
        assign_splits(make_documents(2), 0, 0.05, 0.05)


def test_leak_counter_finds_a_shared_paragraph():
    paragraph = "Este parágrafo é longo o bastante para ser comparado entre as partições do corpus."
    documents = make_documents(3)
    for d, split in zip(documents, ("train", "val", "test")):
        d.split = split
    assert count_leaks(documents, 40) == 0
    documents[0].text += "\n" + paragraph
    documents[2].text += "\n" + paragraph.upper()
    assert count_leaks(documents, 40) == 1
