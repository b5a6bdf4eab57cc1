"""The Colab notebook, run end to end as CI runs it: every code cell in order in one namespace, in a fresh folder,
with the smoke setting (a minimal study on a small corpus); the cells tagged `install` (git clone, pip) are skipped,
the package being installed already."""

import json
import os

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "capitu_colab.ipynb"


def test_the_notebook_runs_from_start_to_end(small_corpus, tmp_path, monkeypatch, capfd):
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4 and "Abrir no Colab" in "".join(notebook["cells"][0]["source"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CAPITU_SMOKE", "1")
    monkeypatch.setenv("CAPITU_NOTEBOOK_SOURCE", str(small_corpus))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    namespace: dict = {}
    ran = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code" or "install" in cell["metadata"].get("tags", []):
            continue
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name} cell {cell['id']}", "exec"), namespace)
        ran += 1
    assert ran == 5
    printed = capfd.readouterr().out  # the cells' prints and the commands' output
    # capitu models --study, before the study: the models it trains and their training tokens
    assert "capitu study --preset tiny --config smoke.toml: 2 variants x 1 seed, flops budget" in printed
    assert "» Capitu tinha olhos de" in printed  # the generations, side by side
    results = json.loads((tmp_path / "studies" / "colab" / "results.json").read_text())
    assert {e["name"] for e in results["variants"]} == {"baseline", "rope"}
    assert "the best with an HF equivalent" in printed  # capitu export of the study folder says which it took
    exported = namespace["exported"]
    assert (exported / "config.json").is_file() and (exported / "model.safetensors").is_file()
