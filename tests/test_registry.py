import hashlib
import http.server
import io
import threading
import zipfile

import pytest
from conftest import run_cli

from capitu.data import registry
from capitu.data.registry import NamedSource, fetch, load_registry
from capitu.errors import UserError

TEXTS = {
    "txt/conto/um.txt": "Era uma vez um conto que ninguém lia.\n" * 40,
    "txt/crítica/dois.txt": "A crítica é a arte de julgar as obras do espírito.\n" * 40,
    "txt/poesia/três.txt": "Minha terra tem palmeiras\nOnde canta o sabiá.\n" * 40,
}


def make_zip(texts: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in texts.items():
            archive.writestr(f"dataset-abc123/{path}", text.encode("utf-8"))
        archive.writestr("dataset-abc123/README.md", "not a text of the source")
    return buffer.getvalue()


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1; set `.payload` to what it serves; counts requests."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.payload)))
            self.end_headers()
            self.wfile.write(state.payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state = httpd
    state.requests = 0
    state.payload = make_zip(TEXTS)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/archive.zip"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()


def source_for(url: str, texts: dict[str, str] = TEXTS) -> NamedSource:
    sums = {path: hashlib.sha256(text.encode()).hexdigest() for path, text in texts.items()}
    return NamedSource(name="teste", description="test", url=url, members="txt/", sha256=sums)


def test_download_verify_and_reuse(server, tmp_path):
    known = {"teste": source_for(server.url)}
    folder = fetch("teste", tmp_path, known)
    assert (folder / "crítica" / "dois.txt").read_text() == TEXTS["txt/crítica/dois.txt"]
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.txt")) == [
        "conto/um.txt", "crítica/dois.txt", "poesia/três.txt"
    ]
    assert fetch("teste", tmp_path, known) == folder
    assert server.requests == 1  # the second call reused the verified cache
    (folder / "conto" / "um.txt").write_text("tampered")
    fetch("teste", tmp_path, known)
    assert server.requests == 2 and (folder / "conto" / "um.txt").read_text() == TEXTS["txt/conto/um.txt"]


def test_checksum_mismatch_fails_and_keeps_nothing(server, tmp_path):
    server.payload = make_zip({**TEXTS, "txt/conto/um.txt": "Outro texto.\n"})
    with pytest.raises(UserError, match="checksum mismatch for txt/conto/um.txt"):
        fetch("teste", tmp_path, {"teste": source_for(server.url)})
    assert not (tmp_path / "teste" / "texts").exists()
    assert not list((tmp_path / "teste").glob("archive*"))


def test_missing_member_and_non_zip_fail(server, tmp_path):
    server.payload = make_zip({k: v for k, v in TEXTS.items() if "poesia" not in k})
    with pytest.raises(UserError, match="1 expected texts missing"):
        fetch("teste", tmp_path, {"teste": source_for(server.url)})
    server.payload = b"<html>not found</html>"
    with pytest.raises(UserError, match="not a zip archive"):
        fetch("teste", tmp_path, {"teste": source_for(server.url)})


def test_unreachable_url_and_unknown_name(tmp_path):
    with pytest.raises(UserError, match="cannot download"):
        fetch("teste", tmp_path, {"teste": source_for("http://127.0.0.1:9/nothing.zip")})
    with pytest.raises(UserError, match="unknown source 'nada'"):
        fetch("nada", tmp_path, {})


def test_machado_is_registered_with_every_text_checksum(corpus):
    machado = load_registry()["machado"]
    assert machado.url.startswith("https://") and len(machado.sha256) == 116
    manifest = (corpus / "MANIFEST.csv").read_text(encoding="utf-8")
    for path, digest in machado.sha256.items():
        assert digest in manifest and path in manifest


def test_prepare_from_a_named_source(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "load_registry", lambda: {"teste": source_for(server.url)})
    code, out, err = run_cli(
        ["prepare", "--source", "teste", "--out", tmp_path / "data", "--cache", tmp_path / "cache",
         "--vocab-size", "300", "--quiet", "--min-document-chars", "10"],
        capsys,
    )
    assert code == 0, err
    assert "3 documents read, 3 kept" in out
