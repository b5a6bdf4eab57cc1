import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_run
from fastapi.testclient import TestClient

from capitu.generate import Sampling, complete, load_for_generation
from capitu.serve import create_app
from capitu.votes import read_votes

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def runs(prepared_bpe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    for name, seed in (("baseline", 0), ("rope", 1), ("<em>odd", 2)):
        torch.manual_seed(seed)
        make_run(folder / name, prepared_bpe, pos="rope" if name == "rope" else "learned")
    return folder


@pytest.fixture()
def client(runs, tmp_path):
    app = create_app([runs / "baseline", runs / "rope", runs / "<em>odd"], votes=tmp_path / "votes.sqlite")
    with TestClient(app) as client:
        client.app_state = app.state
        yield client


def events(response) -> list[dict]:
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) for line in response.text.split("\n\n") if line.startswith("data: ")]


def test_page_and_models(client):
    page = client.get("/")
    assert page.status_code == 200 and "Side by side" in page.text
    assert "&lt;em&gt;odd" in page.text and "<em>odd" not in page.text  # names are text, not markup
    models = client.get("/api/models").json()["models"]
    assert [m["name"] for m in models] == ["baseline", "rope", "<em>odd"] and models[0]["id"] == "m0"


def test_the_page_speaks_the_browsers_language_or_the_one_asked_for(client):
    portuguese = client.get("/", headers={"Accept-Language": "pt-BR,pt;q=0.9,en;q=0.8"}).text
    assert '<html lang="pt">' in portuguese and "Lado a lado" in portuguese and "Side by side" not in portuguese
    english = client.get("/?lang=en", headers={"Accept-Language": "pt-BR"}).text
    assert '<html lang="en">' in english and "Side by side" in english
    assert "Side by side" in client.get("/", headers={"Accept-Language": "de-DE,fr;q=0.5"}).text  # none it has
    assert "Lado a lado" in client.get("/?lang=pt").text
    assert "Side by side" in client.get("/?lang=xx").text


def test_each_model_shows_its_test_bits_per_byte_where_it_was_measured(runs, tmp_path):
    import shutil

    shutil.copytree(runs / "rope", tmp_path / "rope")
    (tmp_path / "rope" / "eval_test.json").write_text(json.dumps({"bpb": 1.96884, "loss": 4.8}))
    app = create_app([tmp_path / "rope", runs / "baseline"], votes=tmp_path / "votes.sqlite")
    with TestClient(app) as client:
        assert [m["test_bpb"] for m in client.get("/api/models").json()["models"]] == [1.96884, None]
        english, portuguese = client.get("/?lang=en").text, client.get("/?lang=pt").text
    assert english.count("<div class=\"measured\">") == 1 and "1.969 bits per byte on the test split<" in english
    assert "1,969 bits por byte na partição de teste<" in portuguese


def test_every_language_has_every_word_of_the_page():
    from capitu.pages import PAGE_WORDS
    english = PAGE_WORDS["en"]
    for language, words in PAGE_WORDS.items():  # `method`: English's is the API's own
        assert set(words) - {"method"} == set(english), language
        assert [len(words[k]) for k in ("ranking_head", "quality_head")] == [8, 6], language
        assert set(words["errors"]) == set(english["errors"]), language
        for code, text in words["errors"].items():  # the same values to fill in
            assert set(re.findall(r"\{(\w+)\}", text)) <= set(re.findall(r"\{(\w+)\}", english["errors"][code]) +
                                                             ["fields"]), (language, code)
    served = (REPO / "capitu/serve.py").read_text(encoding="utf-8")
    assert set(re.findall(r'(?:Refused\(\d+, |error_body\()"(\w+)"', served)) == set(english["errors"])
    used = set(re.findall(r"\bt\.(\w+)", (REPO / "capitu/templates/index.html").read_text(encoding="utf-8")))
    used |= set(re.findall(r"\bT\.(\w+)", (REPO / "capitu/templates/app.js").read_text(encoding="utf-8")))
    assert used - {"method"} == set(english)  # every word is used, and none is missing


def test_models_that_would_share_a_name_are_named_by_their_paths(runs, tmp_path):
    """Votes are counted by name: two studies' baselines, or two runs called the same, may not share one."""
    from capitu.errors import UserError
    from capitu.serve import find_models

    for study in ("tiny", "gpu"):
        (tmp_path / study / "runs").mkdir(parents=True)
        (tmp_path / study / "study.json").write_text(json.dumps({"study": {"first_seed": 1}, "variants": [
            {"name": "baseline"}, {"name": study}]}))
        for name in ("baseline", study):
            (tmp_path / study / "runs" / f"{name}-s1").symlink_to(runs / "baseline")
    for link, target in (("links/rope", "rope"), ("links/baseline", "baseline"), ("again/baseline", "<em>odd")):
        (tmp_path / link).parent.mkdir(exist_ok=True)
        (tmp_path / link).symlink_to(runs / target)
    found = find_models([tmp_path / name for name in ("tiny", "gpu", "links/rope", "again/baseline")])
    assert [m.name for m in found] == ["tiny/baseline", "tiny", "gpu/baseline", "gpu", "rope", "again/baseline"]
    found = find_models([tmp_path / "links" / "baseline", tmp_path / "again" / "baseline"])
    assert [m.name for m in found] == ["links/baseline", "again/baseline"]
    with pytest.raises(UserError, match="a folder is given twice"):
        find_models([runs / "rope", tmp_path / "links" / "rope"])


def test_generate_streams_what_capitu_generate_writes(client, runs):
    body = {"model": "m1", "prompt": "Capitu tinha olhos de", "new_tokens": 12, "temperature": 0.8, "top_k": 40,
            "seed": 7}
    stream = events(client.post("/api/generate", json=body))
    last = stream[-1]
    assert last["done"] and last["tokens_per_s"] > 0
    assert "".join(e["text"] for e in stream[:-1]) == last["text"][len(body["prompt"]):]
    decoder, tokenizer = load_for_generation(runs / "rope", torch.device("cpu"), compile=False)
    assert last["text"] == complete(decoder, tokenizer, body["prompt"], 12, Sampling(temperature=0.8, top_k=40), 7)


@pytest.mark.parametrize("body, status, message, code, values", [
    ({"model": "m9", "prompt": "Era"}, 404, "unknown model 'm9'", "unknown_model", {"model": "m9"}),
    ({"model": "../../etc/passwd", "prompt": "Era"}, 404, "unknown model", "unknown_model", None),
    ({"prompt": "Era"}, 422, "model: Field required", "invalid", {"fields": ["model"]}),
    ({"model": "m0"}, 422, "prompt: Field required", "invalid", None),
    ({"model": "m0", "prompt": "Era", "new_tokens": 0}, 422, "new_tokens", "invalid", None),
    ({"model": "m0", "prompt": "Era", "new_tokens": 65}, 422, "new_tokens must be at most 64 (the context of baseline)",
     "too_many_tokens", {"limit": 64, "model": "baseline"}),
    ({"model": "m0", "prompt": "palavra " * 100}, 422, "longer than the context", "prompt_too_long", None),
    ({"model": "m0", "prompt": "x" * 5000}, 422, "prompt", "invalid", None),
    ({"model": "m0", "prompt": "Era", "top_p": 2, "seed": 1.5}, 422, "top_p: Input should be less than or equal to 1",
     "invalid", {"fields": ["top_p", "seed"]}),
    ({"model": "m0", "prompt": "Era", "temperature": -1}, 422, "temperature", "invalid", None),
])
def test_bad_generate_requests_get_a_json_error(client, body, status, message, code, values):
    """In English, and by code and values for the page to say in its language."""
    response = client.post("/api/generate", json=body)
    answer = response.json()
    assert response.status_code == status and message in answer["error"] and answer["code"] == code, response.text
    assert values is None or {key: answer["values"][key] for key in values} == values, answer


def test_a_failure_is_an_error_without_its_traceback(client, monkeypatch):
    """Inside the stream, which has begun when generation fails, and in the answer of a request that is not one."""
    server = client.app_state.server

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(server, "generate", broken)
    last = events(client.post("/api/generate", json={"model": "m0", "prompt": "Era", "new_tokens": 2}))[-1]
    assert last == {"done": True, "error": "generation failed: RuntimeError", "code": "generation_failed",
                    "values": {"name": "RuntimeError"}}
    monkeypatch.setattr(server, "quality", None)
    with TestClient(client.app, raise_server_exceptions=False) as failing:
        response = failing.get("/api/quality")
    assert response.status_code == 500 and response.json()["error"] == "internal error: RuntimeError"
    assert "secret" not in response.text


def test_compiled_serving_writes_the_same_text(runs, tmp_path):
    app = create_app([runs / "rope"], votes=tmp_path / "votes.sqlite", compile=True)
    body = {"model": "m0", "prompt": "Era uma vez", "new_tokens": 10, "seed": 5}
    with TestClient(app) as compiled:
        text = events(compiled.post("/api/generate", json=body))[-1]["text"]
    decoder, tokenizer = load_for_generation(runs / "rope", torch.device("cpu"), compile=False)
    assert text == complete(decoder, tokenizer, body["prompt"], 10, Sampling(temperature=0.8, top_k=40), 5)
    assert app.state.server.models[0].loaded[0].path == "compiled"


def test_malformed_requests_and_unknown_routes(client):
    response = client.post("/api/generate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "error" in response.json()
    assert client.get("/api/nothing").status_code == 404 and "error" in client.get("/api/nothing").json()
    assert client.post("/api/vote", json={"pair": "nope", "choice": "A"}).status_code == 404
    assert client.post("/api/vote", json={"pair": "nope", "choice": "C"}).status_code == 422


def test_blind_votes_are_stored_and_ranked(client, tmp_path):
    names = set()
    for choice in ("A", "B", "tie"):
        drawn = client.post("/api/blind", json={"prompt": "Era uma vez", "new_tokens": 8, "seed": 3}).json()
        assert {"pair", "a", "b"} <= set(drawn) and drawn["a"].startswith("Era uma vez")
        revealed = client.post("/api/vote", json={"pair": drawn["pair"], "choice": choice}).json()
        assert revealed["a"] != revealed["b"] and revealed["choice"] == choice
        names |= {revealed["a"], revealed["b"]}
        again = client.post("/api/vote", json={"pair": drawn["pair"], "choice": choice})
        assert again.status_code == 404  # one vote per pair
    assert [choice for _, _, choice in read_votes(tmp_path / "votes.sqlite")] == ["A", "B", "tie"]
    result = client.get("/api/ranking").json()
    assert result["votes"] == 3 and {m["model"] for m in result["models"]} == names
    assert sum(m["votes"] for m in result["models"]) == 6


def test_a_full_queue_answers_429(client):
    server = client.app_state.server
    held = [server.slot() for _ in range(server.queue_limit)]
    try:
        response = client.post("/api/generate", json={"model": "m0", "prompt": "Era"})
        assert response.status_code == 429 and "busy" in response.json()["error"]
    finally:
        for slot in held:
            slot.release()
    assert client.post("/api/generate", json={"model": "m0", "prompt": "Era", "new_tokens": 2}).status_code == 200


def test_writing_numbers_for_every_model(client):
    result = client.get("/api/quality").json()
    assert [m["model"] for m in result["models"]] == ["baseline", "rope", "<em>odd"]
    assert all(0 <= m["known_words"] <= 1 and 0 < m["distinct_1"] <= 1 for m in result["models"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def live_server(runs, tmp_path):
    import uvicorn

    app = create_app([runs / "baseline", runs / "rope", runs / "<em>odd"], votes=tmp_path / "votes.sqlite")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tmp_path / "votes.sqlite"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_person_generates_votes_three_times_and_sees_the_ranking(live_server):
    from playwright.sync_api import expect, sync_playwright

    url, votes = live_server
    shots = Path(os.environ.get("CAPITU_SCREENSHOTS", votes.parent))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url)
        page.fill("#prompt", "Capitu tinha olhos de")
        page.click("#generate")
        for column in page.locator("#side .column").all():
            expect(column.locator(".rate")).to_contain_text("tokens/s", timeout=60_000)
            assert column.locator(".text").inner_text().startswith("Capitu tinha olhos de")
        page.screenshot(path=str(shots / "serve-side-by-side.png"), full_page=True)
        page.click("#tab-ranking")
        expect(page.locator("#ranking-summary")).to_contain_text("0 votes")
        page.click("#tab-blind")
        for number in range(3):
            page.click("#draw")
            expect(page.locator("#choices")).to_be_visible(timeout=60_000)
            page.click("#choices button[data-choice='A']" if number < 2 else "#choices button[data-choice='tie']")
            expect(page.locator("#verdict")).to_contain_text("Vote recorded")
            assert page.locator("#name-a").inner_text().startswith("(")
        page.screenshot(path=str(shots / "serve-blind.png"), full_page=True)
        page.click("#tab-ranking")
        expect(page.locator("#ranking-summary")).to_contain_text("3 votes")
        assert page.locator("#ranking-table tr").count() >= 3  # a header and at least two models
        page.screenshot(path=str(shots / "serve-ranking.png"), full_page=True)
        page = browser.new_page(viewport={"width": 1200, "height": 800}, locale="pt-BR")  # a Portuguese browser
        page.goto(url)
        page.click("#tab-ranking")
        expect(page.locator("#ranking-summary")).to_contain_text("3 votos. Bradley-Terry (minorização")
        assert page.locator("#ranking-table th").first.inner_text() == "modelo"
        assert page.locator("#tab-blind").inner_text() == "Às cegas"
        page.click("#tab-side")  # what the server refuses, in the page's words
        page.fill("#new_tokens", "1000")
        page.click("#generate")
        expect(page.locator("#error")).to_have_text("tokens novos: no máximo 64 (o contexto de baseline)")
        page.fill("#new_tokens", "8")
        page.fill("#top_p", "0")
        page.click("#generate")
        expect(page.locator("#error")).to_have_text("valor inválido: top-p")
        page.fill("#top_p", "1")
        page.click("#tab-blind")  # judged from the keyboard: n draws, 2 votes B; the second 2 finds no pair
        expect(page.locator(".keys")).to_contain_text("Teclas: n um novo par")
        page.locator("body").click()  # out of the fields, whose keys are typing
        page.keyboard.press("n")
        expect(page.locator("#choices")).to_be_visible(timeout=60_000)
        page.keyboard.press("2")
        page.keyboard.press("2")
        expect(page.locator("#verdict")).to_have_text("Voto registrado: B é melhor.")
        page.wait_for_timeout(300)  # room for a second vote's answer, were one sent
        assert page.locator("#error").inner_text() == ""
        page.fill("#prompt", "n2")  # typed into a field: no draw, no vote
        assert page.locator("#choices").is_hidden() and page.locator("#verdict").inner_text().startswith("Voto")
        browser.close()
    assert len(read_votes(votes)) == 4


def test_a_start_refused_is_one_line_and_leaves_no_votes_file(runs, tmp_path, capsys):
    from conftest import run_cli

    with socket.socket() as taken:  # another server on the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(["serve", runs / "baseline", "--port", port], capsys)
    assert code == 2 and err == f"capitu: error: cannot listen on 127.0.0.1:{port}: Address already in use (choose " \
                                 "another with --port)\n" and out == ""
    assert not list(runs.glob("*/votes.sqlite*"))
    (tmp_path / "notes.sqlite").write_text("not a database, but someone's notes " * 4, encoding="utf-8")
    for votes, message in ((tmp_path / "notes.sqlite", "file is not a database"),
                           (tmp_path / "absent" / "votes.sqlite", "unable to open database file")):
        code, out, err = run_cli(["serve", runs / "baseline", "--port", free_port(), "--votes", votes], capsys)
        assert code == 2 and err == f"capitu: error: cannot use {votes} as the votes file: {message}\n", err
    assert (tmp_path / "notes.sqlite").read_text(encoding="utf-8") == "not a database, but someone's notes " * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]


def test_ctrl_c_stops_the_server_and_keeps_every_vote(runs, tmp_path):
    import signal
    import subprocess
    import sys

    import httpx
    from conftest import REPO

    port, votes = free_port(), tmp_path / "votes.sqlite"
    server = subprocess.Popen([sys.executable, "-m", "capitu", "serve", str(runs / "baseline"), str(runs / "rope"),
                               "--port", str(port), "--votes", str(votes)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api/models", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    for choice in ("A", "B"):
        pair = httpx.post(url + "/api/blind", json={"prompt": "Era", "new_tokens": 4}, timeout=30).json()["pair"]
        assert httpx.post(url + "/api/vote", json={"pair": pair, "choice": choice}, timeout=30).status_code == 200
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in err, err
    assert "2 models at http://127.0.0.1:" in out
    assert [choice for _, _, choice in read_votes(votes)] == ["A", "B"]
