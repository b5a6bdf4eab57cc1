from collections import Counter

from capitu.data.clean import (
    clean_document,
    normalize_line_endings,
    normalize_unicode,
    reflow,
    remove_control_characters,
    strip_gutenberg,
    tidy_lines,
    wrap_width,
)

PROSE = (
    "Aqui está o que contava, há muitos anos, um velho cônego da Capela Imperial, homem de\n"
    "poucas palavras e muitas leituras, a quem a cidade inteira respeitava por sua prudência e\n"
    "pelo saber que acumulara em longos anos de estudo.\n"
    "Não era rico.\n"
    "— Não desejo ao meu maior inimigo o que me aconteceu no mês de abril de 1839, disse ele,\n"
    "quando lhe perguntei a razão daquela tristeza que lhe ficara no rosto desde então, e que\n"
    "ninguém sabia explicar.\n"
    "Tinha-me dado na cabeça escrever uma obra política, a história do reinado de D. Pedro I, e\n"
    "até então esperdiçara algum talento em décimas e sonetos, muitos artigos de periódicos e\n"
    "alguns sermões, que cedia a outros, depois que reconheci que não tinha os dons indispensá-\n"
    "veis ao púlpito.\n"
)
VERSE = (
    "O poeta é um fingidor.\n"
    "Finge tão completamente\n"
    "Que chega a fingir que é dor\n"
    "A dor que deveras sente.\n"
    "\n"
    "E os que leem o que escreve,\n"
    "Na dor lida sentem bem,\n"
    "Não as duas que ele teve,\n"
    "Mas só a que eles não têm.\n"
    "\n"
    "E assim nas calhas de roda\n"
    "Gira, a entreter a razão,\n"
    "Esse comboio de corda\n"
    "Que se chama coração.\n"
)


def test_nfc_composes_decomposed_accents():
    stats = Counter()
    decomposed = "cora\u0063\u0327a\u0303o"  # c + cedilla, a + tilde
    assert normalize_unicode(decomposed, stats) == "coração"
    assert stats["nfc_changed_documents"] == 1
    assert normalize_unicode("coração", stats) == "coração"
    assert stats["nfc_changed_documents"] == 1


def test_line_endings_become_lf():
    stats = Counter()
    assert normalize_line_endings("um\r\ndois\rtrês\n", stats) == "um\ndois\ntrês\n"
    assert stats["line_endings_fixed_documents"] == 1


def test_control_characters_removed_but_newline_and_tab_kept():
    stats = Counter()
    text = "\ufeffolá\x00 mun\x07do\tfim\n\x85se\u00adgue"
    assert remove_control_characters(text, stats) == "olá mundo\tfim\nsegue"
    assert stats["control_characters_removed"] == 5


def test_gutenberg_header_and_footer_removed():
    stats = Counter()
    text = (
        "The Project Gutenberg EBook of Iracema, by José de Alencar\n"
        "This eBook is for the use of anyone anywhere at no cost\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK IRACEMA ***\n"
        "Verdes mares bravios de minha terra natal.\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK IRACEMA ***\n"
        "Updated editions will replace the previous one.\n"
    )
    assert strip_gutenberg(text, stats).strip() == "Verdes mares bravios de minha terra natal."
    assert stats["gutenberg_stripped_documents"] == 1
    assert stats["gutenberg_characters_removed"] == len(text) - len("\nVerdes mares bravios de minha terra natal.\n")


def test_text_without_gutenberg_markers_is_untouched():
    stats = Counter()
    text = "Fala-se aqui do Project Gutenberg, mas sem marcadores.\n"
    assert strip_gutenberg(text, stats) == text
    assert stats["gutenberg_stripped_documents"] == 0


def test_tidy_lines_strips_trailing_spaces_and_collapses_blank_lines():
    assert tidy_lines("  \n \nabc   \n\n\n  \ndef \n\n") == ["abc", "", "def"]


def test_wrapped_prose_is_reflowed_into_paragraphs():
    stats = Counter()
    lines = reflow(tidy_lines(PROSE), stats)
    assert len(lines) == 4
    assert lines[0].startswith("Aqui está") and lines[0].endswith("em longos anos de estudo.")
    assert lines[1] == "Não era rico."
    assert lines[2].startswith("— Não desejo") and lines[2].endswith("ninguém sabia explicar.")
    assert "indispensá-veis" in lines[3]  # a line-final hyphen is kept and joined without a space
    assert stats["reflowed_documents"] == 1 and stats["lines_joined"] == 7


def test_verse_keeps_its_line_breaks():
    stats = Counter()
    assert wrap_width(tidy_lines(VERSE)) == 0
    assert reflow(tidy_lines(VERSE), stats) == tidy_lines(VERSE)
    assert stats["lines_joined"] == 0


def test_verse_quoted_inside_wrapped_prose_keeps_its_lines():
    stanza = "Minha terra tem palmeiras,\nOnde canta o sabiá;\nAs aves que aqui gorjeiam,\nNão gorjeiam como lá.\n"
    lines = reflow(tidy_lines(PROSE + stanza + PROSE), Counter())
    assert "\n".join(lines).count("Minha terra tem palmeiras,\nOnde canta o sabiá;\n") == 1
    assert lines.count("Não era rico.") == 2


def test_one_line_paragraphs_are_left_alone():
    paragraphs = "\n\n".join(f"Parágrafo {i} " + "palavra " * (20 + 7 * i) for i in range(12))
    assert reflow(tidy_lines(paragraphs), Counter()) == tidy_lines(paragraphs)


def test_clean_document_runs_every_step():
    stats = Counter()
    raw = "\ufeffCapi\u0301tulo I\r\n\r\n\r\nTexto\x00 final.   \r\n"
    assert clean_document(raw, stats) == "Capítulo I\n\nTexto final."
    assert stats["nfc_changed_documents"] == 1
    assert stats["line_endings_fixed_documents"] == 1
    assert stats["control_characters_removed"] == 2
