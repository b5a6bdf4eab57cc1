from collections import Counter

from capitu.data.dedup import Document, deduplicate, normalize

LONG_A = "Era uma vez, numa cidade do interior, um homem que amava os livros mais do que a vida."
LONG_B = "Ninguém sabia de onde viera nem para onde iria, mas todos o cumprimentavam na rua."
LONG_C = "A cidade inteira se lembrava do dia em que ele chegou, debaixo de uma chuva torrencial."


def doc(name, text):
    return Document(name, text, sha256="0" * 64, raw_bytes=len(text.encode()))


def test_normalisation_ignores_case_punctuation_and_spacing():
    assert normalize("  Olá,   MUNDO!  — disse ele. ") == "olá mundo disse ele"


def test_exact_duplicate_documents_are_removed_keeping_one():
    stats = Counter()
    documents = [doc("a", LONG_A), doc("b", LONG_A.upper()), doc("c", LONG_B)]
    deduplicate(documents, min_paragraph_chars=20, min_document_chars=0, stats=stats)
    assert [d.removed for d in documents] == ["", "duplicate of a", ""]
    assert stats["duplicate_documents_removed"] == 1


def test_duplicate_paragraphs_removed_across_documents_and_short_ones_kept():
    stats = Counter()
    first = doc("first", "\n".join([LONG_A, "— Sim.", LONG_B, LONG_C, LONG_C + " E mais.", "Fim."]))
    second = doc("second", "\n".join(["— Sim.", LONG_A, "Outro parágrafo curto.", "Fim."]))
    deduplicate([first, second], min_paragraph_chars=40, min_document_chars=0, stats=stats, max_duplicate_share=1.0)
    assert first.text.split("\n") == [LONG_A, "— Sim.", LONG_B, LONG_C, LONG_C + " E mais.", "Fim."]
    assert second.text.split("\n") == ["— Sim.", "Outro parágrafo curto.", "Fim."]
    assert stats["duplicate_paragraphs_removed"] == 1
    assert stats["duplicate_paragraph_characters_removed"] == len(LONG_A)


def test_a_work_contained_in_another_is_removed_whole():
    stats = Counter()
    # the same sentences, wrapped into paragraphs differently: no paragraph is identical
    big = doc("big", f"{LONG_A} {LONG_B}\n{LONG_C}\nMais um parágrafo que só existe na obra maior, longo o bastante.")
    small = doc("small", f"{LONG_A}\n{LONG_B} {LONG_C}")
    deduplicate([small, big], min_paragraph_chars=40, min_document_chars=0, stats=stats)
    assert big.removed == ""
    assert small.removed.startswith("near-duplicate: 100%")
    assert stats["near_duplicate_documents_removed"] == 1


def test_documents_left_too_short_are_dropped():
    stats = Counter()
    documents = [doc("a", LONG_A + "\n" + LONG_B + "\n" + LONG_C), doc("b", "Curto.\n" + LONG_A)]
    deduplicate(documents, min_paragraph_chars=40, min_document_chars=20, stats=stats, max_duplicate_share=1.0)
    assert documents[1].removed == "too little left after paragraph deduplication"


def test_marks_computed_in_worker_processes_equal_those_computed_in_line():
    from capitu.data.dedup import all_marks, marks_of

    texts = ["Olá, mundo. " * 400 + "\nUma linha comprida, com muitas palavras diferentes.\n" * 30, "curto", ""] * 3
    assert all_marks(texts, 20, parallel_chars=0) == [marks_of(text, 20) for text in texts]
