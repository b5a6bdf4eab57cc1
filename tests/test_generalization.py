import json
from collections import Counter
from pathlib import Path

from test_pairs import CONLLU

from capitu.study.config import StudyConfig
from capitu.study.generalization import build_pairs, from_here, held_out, prepare_inputs


def test_a_set_loses_the_documents_the_data_trains_on_and_a_missing_path_is_skipped(prepared_bpe, small_corpus,
                                                                                      tmp_path, caplog):
    manifest = {e["path"]: e for e in json.loads((prepared_bpe / "meta.json").read_text())["manifest"]}
    trained = [name for name, e in manifest.items() if e["split"] == "train"]
    other = [name for name, e in manifest.items() if e["split"] != "train"]
    study = StudyConfig(eval_texts={"mixed": [str(small_corpus / trained[0]), str(small_corpus / other[0])],
                                    "seen": [str(small_corpus / trained[1])],
                                    "gone": [str(tmp_path / "missing.txt")]},
                        ud=str(tmp_path / "no-treebank"))
    inputs = prepare_inputs(tmp_path / "study", study, prepared_bpe)
    err = caplog.text  # warnings, logged
    assert set(inputs["texts"]) == {"mixed"} and inputs["texts"]["mixed"]["left_out"] == 1
    assert inputs["texts"]["mixed"]["documents"] == 1 and inputs["pairs"] is None
    assert "seen skipped: every document of it is in the training split" in err and "gone skipped" in err
    assert "no CoNLL-U treebank" in err
    # a relative path is named with the folder it is relative to: the working directory
    assert from_here("../a", tmp_path) == f"../a, {tmp_path} (from {Path.cwd()})"
    assert from_here(tmp_path) == str(tmp_path)
    # the SHA-256 a study hands prepare to hold a set out are the ones prepare's manifest records
    assert held_out(StudyConfig(eval_texts={"seen": [str(small_corpus / trained[1])]})) == [
        manifest[trained[1]]["sha256"]]


def test_prepare_leaves_out_the_texts_it_is_told_to(small_corpus, prepared_char, tmp_path):
    from conftest import prepare_folder

    meta = json.loads((prepared_char / "meta.json").read_text())
    left = meta["manifest"][0]
    out = prepare_folder(small_corpus, tmp_path / "held", tokenizer="char", exclude=[left["sha256"]])
    assert [e["path"] for e in out["manifest"]] == [e["path"] for e in meta["manifest"][1:]]
    assert out["cache_key"] != meta["cache_key"] and out["options"]["exclude"] == [left["sha256"]]


def test_pairs_per_phenomenon_draws_a_fixed_sample(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    every, _ = build_pairs(StudyConfig(ud=str(path)))
    sampled, source = build_pairs(StudyConfig(ud=str(path), pairs_per_phenomenon=1))
    counts = Counter(p["phenomenon"] for p in sampled)
    assert source == "t.conllu" and set(counts) == {p["phenomenon"] for p in every} and set(counts.values()) == {1}
    assert all(p in every for p in sampled)
    assert sampled == build_pairs(StudyConfig(ud=str(path), pairs_per_phenomenon=1))[0]  # the same each time
