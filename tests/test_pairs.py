import json
import math

import numpy as np
import pytest
import torch
from conftest import make_run, run_cli

from capitu.pairs import Word, build_lexicon, inflected, minimal_pairs, read_conllu, shows, surface, swapped_form

# Hand-written sentences in UD's format: the lexicon the pairs draw on is theirs.
CONLLU = """# sent_id = s1
# text = Os meninos correm na praça.
1\tOs\to\tDET\t_\tDefinite=Def|Gender=Masc|Number=Plur|PronType=Art\t2\tdet\t_\t_
2\tmeninos\tmenino\tNOUN\t_\tGender=Masc|Number=Plur\t3\tnsubj\t_\t_
3\tcorrem\tcorrer\tVERB\t_\tMood=Ind|Number=Plur|Person=3|Tense=Pres|VerbForm=Fin\t0\troot\t_\t_
4-5\tna\t_\t_\t_\t_\t_\t_\t_\t_
4\tem\tem\tADP\t_\t_\t6\tcase\t_\t_
5\ta\to\tDET\t_\tDefinite=Def|Gender=Fem|Number=Sing|PronType=Art\t6\tdet\t_\t_
6\tpraça\tpraça\tNOUN\t_\tGender=Fem|Number=Sing\t3\tobl\t_\tSpaceAfter=No
7\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_

# sent_id = s2
# text = O menino corre e a menina bonita é alta.
1\tO\to\tDET\t_\tDefinite=Def|Gender=Masc|Number=Sing|PronType=Art\t2\tdet\t_\t_
2\tmenino\tmenino\tNOUN\t_\tGender=Masc|Number=Sing\t3\tnsubj\t_\t_
3\tcorre\tcorrer\tVERB\t_\tMood=Ind|Number=Sing|Person=3|Tense=Pres|VerbForm=Fin\t0\troot\t_\t_
4\te\te\tCCONJ\t_\t_\t9\tcc\t_\t_
5\ta\to\tDET\t_\tDefinite=Def|Gender=Fem|Number=Sing|PronType=Art\t6\tdet\t_\t_
6\tmenina\tmenina\tNOUN\t_\tGender=Fem|Number=Sing\t9\tnsubj\t_\t_
7\tbonita\tbonito\tADJ\t_\tGender=Fem|Number=Sing\t6\tamod\t_\t_
8\té\tser\tAUX\t_\tMood=Ind|Number=Sing|Person=3|Tense=Pres|VerbForm=Fin\t9\tcop\t_\t_
9\talta\talto\tADJ\t_\tGender=Fem|Number=Sing\t3\tconj\t_\tSpaceAfter=No
10\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_

# sent_id = s3
# text = Eu corro e os rapazes bonitos são altos.
1\tEu\teu\tPRON\t_\tCase=Nom|Number=Sing|Person=1|PronType=Prs\t2\tnsubj\t_\t_
2\tcorro\tcorrer\tVERB\t_\tMood=Ind|Number=Sing|Person=1|Tense=Pres|VerbForm=Fin\t0\troot\t_\t_
3\te\te\tCCONJ\t_\t_\t8\tcc\t_\t_
4\tos\to\tDET\t_\tDefinite=Def|Gender=Masc|Number=Plur|PronType=Art\t5\tdet\t_\t_
5\trapazes\trapaz\tNOUN\t_\tGender=Masc|Number=Plur\t8\tnsubj\t_\t_
6\tbonitos\tbonito\tADJ\t_\tGender=Masc|Number=Plur\t5\tamod\t_\t_
7\tsão\tser\tAUX\t_\tMood=Ind|Number=Plur|Person=3|Tense=Pres|VerbForm=Fin\t8\tcop\t_\t_
8\taltos\talto\tADJ\t_\tGender=Masc|Number=Plur\t2\tconj\t_\tSpaceAfter=No
9\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_

# sent_id = s4
# text = O menino é alto.
1\tO\to\tDET\t_\tDefinite=Def|Gender=Masc|Number=Sing|PronType=Art\t2\tdet\t_\t_
2\tmenino\tmenino\tNOUN\t_\tGender=Masc|Number=Sing\t4\tnsubj\t_\t_
3\té\tser\tAUX\t_\tMood=Ind|Number=Sing|Person=3|Tense=Pres|VerbForm=Fin\t4\tcop\t_\t_
4\talto\talto\tADJ\t_\tGender=Masc|Number=Sing\t0\troot\t_\tSpaceAfter=No
5\t.\t.\tPUNCT\t_\t_\t4\tpunct\t_\t_
"""


@pytest.fixture
def treebank(tmp_path):
    path = tmp_path / "mini.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    return path


def test_surface_rebuilds_the_text_with_multiword_tokens_and_spacing(treebank):
    for sentence in read_conllu(treebank):
        assert surface(sentence) == sentence.text


def test_a_treebank_with_a_byte_order_mark_reads_the_same(treebank, tmp_path):
    marked = tmp_path / "marked.conllu"
    marked.write_bytes(b"\xef\xbb\xbf" + treebank.read_bytes())
    assert [(s.sent_id, s.text) for s in read_conllu(marked)] == [(s.sent_id, s.text) for s in read_conllu(treebank)]


def test_each_pair_breaks_one_attested_agreement(treebank):
    pairs = minimal_pairs([treebank])
    found = {(p["sent_id"], p["phenomenon"], p["word"], p["replacement"]) for p in pairs}
    assert ("s1", "determiner-noun number", "Os", "O") in found  # capitalised as the original
    assert ("s1", "subject-verb number", "correm", "corre") in found
    assert ("s2", "subject-verb number", "corre", "correm") in found
    assert ("s2", "subject-verb person", "corre", "corro") in found  # attested in s3 with Person=1
    assert ("s2", "adjective-noun number", "bonita", "bonitas") not in found  # no attested form: no pair
    assert ("s2", "adjective-noun gender", "bonita", "bonito") not in found
    assert ("s2", "predicative gender", "alta", "alto") in found  # "alto" attested in s4
    assert ("s4", "predicative number", "alto", "altos") in found and ("s4", "predicative gender", "alto",
                                                                        "alta") in found
    assert ("s2", "subject-verb number", "é", "são") in found  # the copula carries the agreement
    assert ("s3", "adjective-noun gender", "bonitos", "bonitas") not in found
    assert not any(p["sent_id"] == "s1" and p["position"] == 5 for p in pairs)  # "a" inside "na": skipped
    for pair in pairs:
        good, bad = pair["good"].split(), pair["bad"].split()
        assert len(good) == len(bad) and sum(a != b for a, b in zip(good, bad)) == 1, pair
    by_id = {s.sent_id: s.text for s in read_conllu(treebank)}
    assert all(p["good"] == by_id[p["sent_id"]] for p in pairs)


def word(form, lemma, upos, feats):
    return Word(1, form, lemma, upos, dict(f.split("=") for f in feats.split("|")), 0, "root", True)


def sentence_of(*words):
    """CoNLL-U lines of one sentence from (form, lemma, upos, feats, head, deprel) tuples."""
    lines = ["# sent_id = t", "# text = " + " ".join(w[0] for w in words)]
    lines += ["\t".join([str(i), form, lemma, upos, "_", feats, str(head), rel, "_", "_"])
              for i, (form, lemma, upos, feats, head, rel) in enumerate(words, 1)]
    return "\n".join(lines) + "\n\n"


def test_what_reading_the_pairs_found_is_skipped(tmp_path):
    """Each rule a reading of 40 pairs per phenomenon found (pairs.py's docstring), on a case of its own."""
    plur3 = "Mood=Ind|Number=Plur|Person=3|Tense=Pres|VerbForm=Fin"
    plur1 = "Mood=Ind|Number=Plur|Person=1|Tense=Pres|VerbForm=Fin"
    text = (sentence_of(("Os", "o", "DET", "Gender=Masc|Number=Plur|PronType=Art", 2, "det"),
                        ("cidadãos", "cidadão", "NOUN", "Gender=Masc|Number=Plur", 3, "nsubj"),
                        ("querem", "querer", "VERB", plur3, 0, "root"))
            + sentence_of(("Eles", "ele", "PRON", "Gender=Masc|Number=Plur|Person=3|PronType=Prs", 2, "nsubj"),
                          ("querem", "querer", "VERB", plur3, 0, "root"))
            + sentence_of(("Nós", "eu", "PRON", "Number=Plur|Person=1|PronType=Prs", 2, "nsubj"),
                          ("queremos", "querer", "VERB", plur1, 0, "root"))
            + sentence_of(("A", "o", "DET", "Gender=Fem|Number=Sing|PronType=Art", 2, "det"),
                          ("artista", "artista", "NOUN", "Gender=Fem|Number=Sing", 0, "root"))
            + sentence_of(("O", "o", "DET", "Gender=Masc|Number=Sing|PronType=Art", 2, "det"),
                          ("livro", "livro", "NOUN", "Gender=Masc|Number=Sing", 0, "root")))
    path = tmp_path / "rules.conllu"
    path.write_text(text, encoding="utf-8")
    found = {(p["good"], p["phenomenon"], p["replacement"]) for p in minimal_pairs([path])}
    assert ("Eles querem", "subject-verb person", "queremos") in found  # a pronoun: "eles queremos" is wrong
    assert not any(g == "Os cidadãos querem" and name.endswith("person") for g, name, _ in found)  # "we citizens"
    assert ("O livro", "determiner-noun gender", "A") in found
    assert not any(g == "A artista" and name.endswith("gender") for g, name, _ in found)  # o/a artista

    lexicon = build_lexicon(read_conllu(path))
    assert shows(lexicon, word("livro", "livro", "NOUN", "Gender=Masc|Number=Sing"), "Gender")
    assert not shows(lexicon, word("presidente", "presidente", "NOUN", "Gender=Fem|Number=Sing"), "Gender")
    assert inflected("seus", "suas") and inflected("mau", "má") and inflected("português", "portuguesa")
    assert not inflected("electrónica", "eletrônico") and not inflected("européia", "europeias")


def test_one_slip_of_annotation_neither_blocks_nor_makes_a_pair(tmp_path):
    masc, fem = "Gender=Masc|Number=Sing|PronType=Art", "Gender=Fem|Number=Sing|PronType=Art"
    text = "".join(sentence_of(("o", "o", "DET", masc, 2, "det"), ("dia", "dia", "NOUN", "Gender=Masc|Number=Sing",
                                                                       0, "root")) for _ in range(12))
    text += sentence_of(("a", "o", "DET", fem, 2, "det"), ("casa", "casa", "NOUN", "Gender=Fem|Number=Sing", 0,
                                                              "root")) * 12
    text += sentence_of(("a", "o", "DET", masc, 2, "det"), ("mar", "mar", "NOUN", "Gender=Masc|Number=Sing", 0, "root"))
    path = tmp_path / "slip.conllu"
    path.write_text(text, encoding="utf-8")
    lexicon = build_lexicon(read_conllu(path))
    assert swapped_form(lexicon, word("o", "o", "DET", masc), "Gender") == "a"  # one "a" tagged Masc: a slip
    assert swapped_form(lexicon, word("a", "o", "DET", fem), "Gender") == "o"


def test_cli_writes_pairs_and_refuses_bad_input(treebank, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    code, printed, err = run_cli(["pairs", "--ud", treebank, "--out", out], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines == minimal_pairs([treebank]) and f"{len(lines):,} pairs" in printed
    # a folder gives its .conllu files (here the one treebank)
    code, _, err = run_cli(["pairs", "--ud", tmp_path, "--out", tmp_path / "folder.jsonl"], capsys)
    assert code == 0 and (tmp_path / "folder.jsonl").read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.conllu").write_text("1\tOnly four\tcolumns\there\n", encoding="utf-8")
    for args, message in ((["--ud", treebank, "--out", out], "exists"),
                          (["--ud", tmp_path / "empty", "--out", tmp_path / "q.jsonl"], "a folder without .conllu"),
                          (["--ud", treebank, "--out", "/proc/q.jsonl"], "cannot write to /proc"),
                          (["--ud", tmp_path / "missing.conllu", "--out", tmp_path / "q.jsonl"], "cannot read"),
                          (["--ud", tmp_path / "notes.conllu", "--out", tmp_path / "q.jsonl"], "not CoNLL-U")):
        code, _, err = run_cli(["pairs", *args], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "q.jsonl").exists()


def test_eval_pairs_counts_the_pairs_the_model_prefers(tmp_path, prepared_bpe, capsys):
    model = make_run(tmp_path / "run", prepared_bpe)
    from capitu.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tmp_path / "run" / "tokenizer.json")
    texts = [("Os meninos correm.", "Os meninos corre."), ("A menina é alta.", "A menina é alto."),
             ("O dia está bonito.", "Os dia está bonito.")]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"phenomenon": name, "good": g, "bad": b}) + "\n"
                            for name, (g, b) in zip(["a", "b", "a"], texts)), encoding="utf-8")

    def log_prob(text):  # independently: the log-softmax of one forward pass, summed over the targets
        ids = torch.tensor([[tokenizer.eot_id] + tokenizer.encode(text)])
        logits, _ = model(ids[:, :-1])
        return torch.log_softmax(logits.double(), -1)[0].gather(1, ids[0, 1:, None]).sum().item()

    right = [log_prob(g) > log_prob(b) for g, b in texts]
    code, out, err = run_cli(["eval", tmp_path / "run", "--pairs", path, "--json", "--quiet"], capsys)
    assert code == 0, err
    pairs = json.loads(out)["pairs"]
    assert pairs["n"] == 3 and pairs["accuracy"] == pytest.approx(sum(right) / 3)
    assert pairs["by_phenomenon"]["a"]["n"] == 2 and pairs["by_phenomenon"]["b"]["accuracy"] == float(right[1])
    low, high = pairs["ci"]
    assert low <= pairs["accuracy"] <= high and (high < 1 or sum(right) == 3)
    assert pairs["unigram"]["n"] == 3 and math.isfinite(pairs["unigram"]["accuracy"])
    assert np.isclose(pairs["chance"], 0.5)
    # with a split too, eval's other keys stay beside "pairs"
    code, out, err = run_cli(["eval", tmp_path / "run", "--pairs", path, "--split", "val", "--json", "--quiet"],
                             capsys)
    both = json.loads(out)
    assert code == 0 and both["pairs"]["accuracy"] == pairs["accuracy"] and both["bpb"] > 0, err
