"""`capitu serve`: a local web page to read the models' writing side by side, and to judge it blind.

The app serves one page (templates/index.html, its script and style inline: it works offline) and a JSON API under
/api. Models are chosen by id from the served list, never by path. Generations run one at a time (the CPU's cores
are shared); at most `queue_limit` requests wait, and one more gets HTTP 429. Every error is a 4xx with a JSON
`{"error": ..., "code": ..., "values": ...}` (a 500 never shows a traceback): `error` in English, and the page says it
in its own language from `code` and `values` (page.toml's errors). Votes are committed to SQLite one by one."""

from __future__ import annotations

import errno
import json
import queue
import random
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from capitu.checkpoint import read_config, weight_shapes
from capitu.device import pick_device
from capitu.errors import UserError
from capitu.folders import RunFolder, StudyFolder
from capitu.generate import PROMPTS, Sampling, as_trained, complete, load_for_generation, prompt_ids, run_labels
from capitu.pages import PAGE_WORDS, page_language, render
from capitu.quality import training_vocabulary, writing_numbers
from capitu.votes import connect, ranking, record_vote, vote_rows

QUALITY_PROMPTS = [*PROMPTS, "— Não sei, respondeu ela,", "Quando cheguei à casa"]
QUALITY_TOKENS, QUALITY_SEED = 40, 1234  # each continuation of the writing numbers (fewer in a short context)
MAX_PROMPT_CHARS = 2000
MAX_UNVOTED_PAIRS = 1000  # pairs shown and not yet judged that the server remembers


@dataclass
class ServedModel:
    id: str
    name: str
    folder: Path
    block_size: int
    test_bpb: float | None = None  # what capitu eval (or the study) measured on its test split, where it did
    loaded: tuple | None = None  # (decoder, tokenizer), on first use: the decoder compiles once


def find_models(paths: list[Path]) -> list[ServedModel]:
    """A study folder gives the first-seed run of each of its variants; a run folder itself. A model is named by its
    variant or folder; where two would share a name (two studies' baselines), by its path from the folder the given
    paths share too (tiny/baseline, gpu/baseline): the votes are counted by name."""
    paths = list(map(Path, paths))
    labels = dict(zip(paths, run_labels(paths))) if paths else {}
    found = []
    for path in paths:
        study = StudyFolder(path)
        if study.plan.is_file():
            found += [(name, f"{labels[path]}/{name}", run) for name, run in study.first_seed_runs()]
        else:
            found.append((path.name, labels[path], path))
    names = [name for name, _, _ in found]
    found = [(name if names.count(name) == 1 else qualified, folder) for name, qualified, folder in found]
    models = []
    for number, (name, folder) in enumerate(found):
        config = read_config(folder)  # a one-line error for anything that is not a model
        weight_shapes(RunFolder(folder).weights)  # it opens: checked here, not at its first generation
        models.append(ServedModel(f"m{number}", name, folder, config["model"]["block_size"], test_bpb(folder)))
    if not models:
        raise UserError("nothing to serve: give a study folder or run folders")
    return models


def test_bpb(folder: Path) -> float | None:
    """The bits per byte capitu eval saved for the run's test split, if it has (a study's runs have)."""
    try:
        return float(json.loads(RunFolder(folder).evaluation_path("test").read_text(encoding="utf-8"))["bpb"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class SamplingRequest(BaseModel):
    """A prompt and how to continue it: what a generation and a blind pair both ask."""
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    new_tokens: int = Field(40, ge=1)
    temperature: float = Field(0.8, ge=0, le=10)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)


class GenerateRequest(SamplingRequest):
    model: str
    seed: int = 1234


class BlindRequest(SamplingRequest):
    seed: int | None = None  # None: drawn by the server


class VoteRequest(BaseModel):
    pair: str
    choice: str = Field(pattern="^(A|B|tie|bad)$")


class Refused(Exception):
    """A request turned down with HTTP `status`: page.toml's error `code`, filled with `values`."""

    def __init__(self, status: int, code: str, **values):
        super().__init__(code)
        self.status, self.code, self.values = status, code, values


def error_body(code: str, **values) -> dict:
    """An error as the API answers it: in English, and by code and values, for the page to say in its language (a
    list value names request fields)."""
    filled = {key: ", ".join(value) if isinstance(value, list) else value for key, value in values.items()}
    return {"error": PAGE_WORDS["en"]["errors"][code].format(**filled), "code": code, "values": values}


@dataclass
class Server:
    models: list[ServedModel]
    votes_path: Path
    device: torch.device
    queue_limit: int = 8
    compile: bool = False  # decode through the compiled step (decode.Decoder)
    pairs: dict = field(default_factory=dict)  # pair id -> what was shown, until voted on
    quality: dict | None = None

    def __post_init__(self):
        self.lock = threading.RLock()  # one generation (or model loading) at a time
        self.database = threading.Lock()  # one connection, used by one request at a time
        self.slots = threading.BoundedSemaphore(self.queue_limit)  # running + waiting
        self.connection: sqlite3.Connection | None = None
        self.chooser = random.Random()

    @property
    def votes(self) -> sqlite3.Connection:
        """The votes database, opened at its first use (`capitu serve` opens it once it holds the port): a start
        refused before that leaves no votes file behind."""
        if self.connection is None:
            self.connection = connect(self.votes_path)
        return self.connection

    def model(self, model_id: str) -> ServedModel:
        served = next((m for m in self.models if m.id == model_id), None)
        if served is None:
            raise Refused(404, "unknown_model", model=model_id)
        return served

    def check_lengths(self, served: ServedModel, prompt: str, new_tokens: int) -> None:
        _, tokenizer = self.load(served)
        if new_tokens > served.block_size:
            raise Refused(422, "too_many_tokens", limit=served.block_size, model=served.name)
        if len(prompt_ids(tokenizer, prompt)) + 1 > served.block_size:
            raise Refused(422, "prompt_too_long", limit=served.block_size, model=served.name)

    def load(self, served: ServedModel):
        with self.lock:
            if served.loaded is None:
                served.loaded = load_for_generation(served.folder, self.device, self.compile)
        return served.loaded

    def generate(self, served: ServedModel, prompt: str, new_tokens: int, sampling: Sampling, seed: int,
                 write=None) -> tuple[str, float]:
        """The completion and its tokens/s, under the lock (callers hold a slot)."""
        with self.lock:
            decoder, tokenizer = self.load(served)
            started = time.perf_counter()
            text = complete(decoder, tokenizer, prompt, new_tokens, sampling, seed, write=write)
            seconds = time.perf_counter() - started
        generated = len(tokenizer.encode(text)) - len(tokenizer.encode(as_trained(prompt)))
        return text, max(generated, 0) / max(seconds, 1e-9)

    def slot(self):
        if not self.slots.acquire(blocking=False):
            raise Refused(429, "busy", limit=self.queue_limit)
        return self.slots


def sampling_of(request) -> Sampling:
    sampling = Sampling(temperature=request.temperature, top_k=request.top_k, top_p=request.top_p)
    sampling.validate()
    return sampling


def create_app(paths: list[Path], votes: Path | None = None, device: str = "cpu", queue_limit: int = 8,
               compile: bool = False) -> FastAPI:
    models = find_models(paths)
    votes = Path(votes) if votes else StudyFolder(paths[0]).votes
    server = Server(models, votes, pick_device(device), queue_limit, compile)
    app = FastAPI(title="capitu serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    add_error_handlers(app)
    add_writing_routes(app, server)
    add_judging_routes(app, server)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON (error_body): 4xx for what the request got wrong, 500 without a traceback."""
    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused):
        return JSONResponse(error_body(error.code, **error.values), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # an unknown route, a method not allowed
        return JSONResponse(error_body("http", message=str(error.detail)), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        fields = [".".join(str(p) for p in e["loc"][1:]) or "body" for e in error.errors()]
        problems = "; ".join(f"{field}: {e['msg']}" for field, e in zip(fields, error.errors()))
        return JSONResponse(error_body("invalid", problems=problems, fields=list(dict.fromkeys(fields))),
                            status_code=422)

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError):
        return JSONResponse(error_body("refused", message=str(error)), status_code=422)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception):
        return JSONResponse(error_body("internal", name=type(error).__name__), status_code=500)


def add_writing_routes(app: FastAPI, server: Server) -> None:
    """The page, the model list and a streamed generation."""
    models = server.models

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, lang: str | None = None):
        language = page_language(lang, request.headers.get("accept-language"))
        return render("index.html", title="capitu", lang=language, t=PAGE_WORDS[language],
                      models=[{"id": m.id, "name": m.name, "test_bpb": m.test_bpb} for m in models])

    @app.get("/api/models")
    def list_models():
        return {"models": [{"id": m.id, "name": m.name, "context": m.block_size, "test_bpb": m.test_bpb}
                           for m in models]}

    @app.post("/api/generate")
    def generate(request: GenerateRequest):
        served = server.model(request.model)
        sampling = sampling_of(request)
        server.check_lengths(served, request.prompt, request.new_tokens)
        slot = server.slot()
        pieces: queue.Queue = queue.Queue()

        def work():
            try:
                text, rate = server.generate(served, request.prompt, request.new_tokens, sampling, request.seed,
                                             write=pieces.put)
                pieces.put({"done": True, "text": text, "tokens_per_s": rate})
            except Exception as error:  # reported in the stream, which has already begun
                pieces.put({"done": True, **error_body("generation_failed", name=type(error).__name__)})
            finally:
                slot.release()

        threading.Thread(target=work, daemon=True).start()

        def events():
            while True:
                item = pieces.get()
                if isinstance(item, dict):
                    yield f"data: {json.dumps(item, ensure_ascii=False)}\n\n"
                    return
                yield f"data: {json.dumps({'text': item}, ensure_ascii=False)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def add_judging_routes(app: FastAPI, server: Server) -> None:
    """Blind pairs, votes, the ranking and the writing numbers."""
    models = server.models

    @app.post("/api/blind")
    def blind(request: BlindRequest):
        if len(models) < 2:
            raise Refused(409, "needs_two")
        sampling = sampling_of(request)
        pair = server.chooser.sample(models, 2)
        for served in pair:
            server.check_lengths(served, request.prompt, request.new_tokens)
        seed = request.seed if request.seed is not None else server.chooser.randrange(2**31)
        slot = server.slot()
        try:
            texts = [server.generate(m, request.prompt, request.new_tokens, sampling, seed)[0] for m in pair]
        finally:
            slot.release()
        pair_id = uuid.uuid4().hex
        server.pairs[pair_id] = {"prompt": request.prompt, "models": [m.name for m in pair], "texts": texts,
                                 "settings": request.model_dump() | {"seed": seed}}
        while len(server.pairs) > MAX_UNVOTED_PAIRS:  # forget the oldest unvoted pairs
            server.pairs.pop(next(iter(server.pairs)))
        return {"pair": pair_id, "a": texts[0], "b": texts[1]}

    @app.post("/api/vote")
    def vote(request: VoteRequest):
        shown = server.pairs.pop(request.pair, None)
        if shown is None:
            raise Refused(404, "unknown_pair")
        with server.database:
            record_vote(server.votes, shown["prompt"], tuple(shown["models"]), tuple(shown["texts"]),
                        shown["settings"], request.choice)
        return {"a": shown["models"][0], "b": shown["models"][1], "choice": request.choice}

    @app.get("/api/ranking")
    def get_ranking():
        with server.database:
            rows = vote_rows(server.votes)
        return ranking(rows)

    @app.get("/api/quality")
    def quality():
        if server.quality is None:
            slot = server.slot()
            try:
                server.quality = writing_table(server)
            finally:
                slot.release()
        return server.quality


def writing_table(server: Server) -> dict:
    """Every model's writing numbers on QUALITY_PROMPTS, sampled with the page's defaults."""
    sampling = Sampling(temperature=0.8, top_k=40)
    rows = []
    vocabularies: dict[str, set | None] = {}
    for served in server.models:
        data = read_config(served.folder).get("config", {}).get("data", {}).get("path", "")
        if data not in vocabularies:
            vocabularies[data] = training_vocabulary(data) if data else None
        continuations = []
        for prompt in QUALITY_PROMPTS:
            new_tokens = min(QUALITY_TOKENS, served.block_size - 16)  # room for the prompt
            text, _ = server.generate(served, prompt, new_tokens, sampling, QUALITY_SEED)
            continuations.append(text[len(prompt):])
        rows.append({"model": served.name, **writing_numbers(continuations, vocabularies[data])})
    return {"prompts": QUALITY_PROMPTS, "models": rows}


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port`, bound here rather than by uvicorn so that a port in use or an address this
    machine lacks is one line before the page is announced (uvicorn logs it and exits with code 3)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol)
    except OSError as error:  # socket.gaierror: a host name that does not resolve
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart reuses the port
        sock.bind(address)
        sock.listen()  # holds the port now: a second server's bind alone would succeed on Linux
    except OSError as error:
        sock.close()
        hint = " (choose another with --port)" if error.errno == errno.EADDRINUSE else ""
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}{hint}") from None
    return sock


def serve(app: FastAPI, sock: socket.socket) -> None:
    """Run the app on `sock` (from `listen`) until Ctrl-C, then close its votes database."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again for the caller (as uvicorn.run)
        pass
    finally:
        if app.state.server.connection is not None:
            app.state.server.connection.close()

