import math
import os
import unicodedata

import numpy as np
import pytest
import torch
from conftest import make_run, run_cli

from capitu.config import load_config
from capitu.decode import Decoder, make_decoder
from capitu.generate import Sampling, TextStream, generate, keep_top_p, next_tokens, penalize_repetition
from capitu.models import build_model
from capitu.study.variants import load_grid, variant_config
from capitu.tokenizer import EOT_ID, load_tokenizer


def test_top_k_one_is_greedy():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    greedy = next_tokens(logits, torch.empty(64, 0, dtype=torch.long), Sampling(temperature=0), None)
    assert torch.equal(greedy, logits.argmax(-1))
    for seed in range(5):
        sampled = next_tokens(logits, torch.empty(64, 0, dtype=torch.long), Sampling(temperature=1.5, top_k=1),
                              torch.Generator().manual_seed(seed))
        assert torch.equal(sampled, greedy)


@pytest.mark.parametrize("p, kept", [(0.3, {2}), (0.6, {2, 0}), (0.7, {2, 0}), (0.8, {2, 0, 3}),
                                     (0.9, {2, 0, 3}), (0.95, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    # sorted: 0.5 (id 2), 0.25 (id 0), 0.1875 (id 3), 0.0625 (id 1); cumulative 0.5, 0.75, 0.9375, 1
    probs = torch.tensor([[0.25, 0.0625, 0.5, 0.1875]])
    filtered = keep_top_p(probs.log(), p)
    assert set(torch.isfinite(filtered[0]).nonzero().flatten().tolist()) == kept


def test_top_p_samples_only_inside_the_nucleus():
    probs = torch.tensor([0.25, 0.0625, 0.5, 0.1875]).repeat(2000, 1)
    drawn = next_tokens(probs.log(), torch.empty(2000, 0, dtype=torch.long), Sampling(temperature=1, top_p=0.7),
                        torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 2}
    assert (drawn == 2).float().mean().item() == pytest.approx(2 / 3, abs=0.04)  # 0.5 / (0.5 + 0.25)


def test_repetition_penalty_follows_ctrl():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    out = penalize_repetition(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


@pytest.fixture(scope="module")
def variants_models():
    base = load_config("tiny", overrides=["model.vocab_size=97", "model.n_layer=2", "model.n_embd=32",
                                          "model.block_size=24", "model.ffn_context=3", "model.ffn_hidden=16"])
    models = {}
    for variant in load_grid():
        torch.manual_seed(1)
        models[variant.name] = build_model(variant_config(base, variant).model).eval()
    return models


def eager(model, batch):
    return make_decoder(model, batch, compile=False)


@torch.no_grad()
def recomputed_greedy(model, prompt, new_tokens):
    """The reference: each token from a plain forward of everything the model sees, no cache.
    A GPT sees its context; once it is full, the newer half (positions restart at 0). The FFN
    sees the last n tokens."""
    window = model.config.block_size
    sequence, start = prompt, max(0, prompt.shape[1] - window)
    for _ in range(new_tokens):
        seen = sequence[:, start:] if model.config.kind == "gpt" else sequence[:, -model.config.ffn_context:]
        sequence = torch.cat([sequence, model(seen)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
        if model.config.kind == "gpt" and sequence.shape[1] - start > window:
            start = sequence.shape[1] - window // 2
    return sequence


def test_greedy_generation_equals_the_recomputed_reference_for_every_variant(variants_models):
    prompt = torch.randint(1, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    for name, model in variants_models.items():
        # 40 new tokens in a 24-token context: the context fills and shifts twice
        generated = generate(eager(model, 2), prompt, 40, Sampling(temperature=0))
        assert generated.shape == (2, 45), name
        assert torch.equal(generated, recomputed_greedy(model, prompt, 40)), name


def test_generation_matches_full_forward_argmax(variants_models):
    """Independent of the cache code: each greedy token is the argmax of a plain forward of
    the sequence so far (inside the context, no shift)."""
    prompt = torch.randint(1, 97, (1, 4), generator=torch.Generator().manual_seed(4))
    for name, model in variants_models.items():
        sequence = generate(eager(model, 1), prompt, 12, Sampling(temperature=0))
        for t in range(4, 16):
            logits, _ = model(sequence[:, :t])
            assert sequence[0, t] == logits[0, -1].argmax(), name


def test_same_seed_same_tokens(variants_models):
    model = variants_models["rope"]
    prompt = torch.zeros(1, 1, dtype=torch.long)
    sampling = Sampling(temperature=1.0, top_k=20, top_p=0.9)
    first, second = (generate(eager(model, 1), prompt, 30, sampling, seed=7) for _ in range(2))
    assert torch.equal(first, second)
    assert not torch.equal(first, generate(eager(model, 1), prompt, 30, sampling, seed=8))


def test_stop_token_ends_generation(variants_models):
    model = variants_models["baseline"]
    prompt = torch.zeros(1, 3, dtype=torch.long)
    tokens = generate(eager(model, 1), prompt, 20, Sampling(temperature=0))
    stop = int(tokens[0, 5])
    stopped = generate(eager(model, 1), prompt, 20, Sampling(temperature=0), stop_token=stop)
    assert torch.equal(stopped, tokens[:, :stopped.shape[1]]) and stopped[0, -1] == stop
    assert stop not in stopped[0, 3:-1].tolist()


def test_stream_holds_back_split_characters(prepared_bpe):
    tokenizer = load_tokenizer(prepared_bpe / "tokenizer.json")
    text = "Coração, ação e lição: à tarde, ônibus."
    pieces = []
    stream = TextStream(tokenizer, pieces.append)
    for token in tokenizer.encode(text):
        stream.add(token)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    # stopped inside a character (the first byte of "ç" alone), the rest is written at the end
    cut = TextStream(tokenizer, pieces.append)
    pieces.clear()
    half = tokenizer.hf.token_to_id("Ã")  # byte-level: 0xC3, the lead byte of ç, ã, à, ô
    for token in tokenizer.encode("Cora") + [half]:
        cut.add(token)
    assert "".join(pieces) == "Cora"
    cut.finish()
    assert "".join(pieces) == tokenizer.decode(tokenizer.encode("Cora") + [half]) and pieces[-1].endswith("\ufffd")


@pytest.fixture
def run(tmp_path, prepared_bpe):
    make_run(tmp_path / "run", prepared_bpe, block_size=32)
    return tmp_path / "run"


def test_cli_prompt_round_trips_accents(run, capsys):
    prompt = "Não há ação sem coração; à noite, Capitu sorriu."
    code, out, err = run_cli(["generate", run, "--prompt", prompt, "-n", "5", "--seed", "3"], capsys)
    assert code == 0, err
    assert out.startswith(prompt)
    code, streamed, err = run_cli(["generate", run, "--prompt", prompt, "-n", "5", "--seed", "3", "--stream"], capsys)
    assert code == 0 and streamed == out
    # the default decodes through the compiled step; the eager step samples the same text
    code, eager, err = run_cli(["generate", run, "--prompt", prompt, "-n", "5", "--seed", "3", "--no-compile"], capsys)
    assert code == 0 and eager == out
    # the same prompt typed in NFD (c + combining cedilla, a + combining tilde) is read as the NFC the model trained on
    decomposed = unicodedata.normalize("NFD", prompt)
    assert decomposed != prompt
    for stream in ([], ["--stream"]):
        code, typed, err = run_cli(["generate", run, "--prompt", decomposed, "-n", "5", "--seed", "3", *stream], capsys)
        assert code == 0 and typed == out, err


def test_cli_empty_prompt_starts_from_end_of_text(run, capsys):
    from capitu.generate import Sampling, complete, load_for_generation, prompt_ids

    decoder, tokenizer = load_for_generation(run, torch.device("cpu"), compile=False)
    assert prompt_ids(tokenizer, "") == [EOT_ID]
    expected = generate(decoder, torch.tensor([[EOT_ID]]), 6, Sampling(temperature=0), stop_token=EOT_ID)
    text = complete(decoder, tokenizer, "", 6, Sampling(temperature=0), None)
    assert text == tokenizer.decode([t for t in expected[0, 1:].tolist() if t != EOT_ID])
    code, out, _ = run_cli(["generate", run, "-n", "6", "--temperature", "0"], capsys)
    assert code == 0 and out == text + "\n"


def test_a_prompts_file_from_notepad_reads_as_its_lines(tmp_path):
    from capitu.generate import read_prompts

    path = tmp_path / "prompts.txt"  # a byte-order mark, Windows line ends and a blank line
    path.write_bytes("\ufeffEra uma vez\r\n\r\nCapitu tinha\r\n".encode("utf-8"))
    assert read_prompts(path) == ["Era uma vez", "Capitu tinha"]


def test_cli_compare_markdown(run, tmp_path, prepared_bpe, capsys):
    make_run(tmp_path / "rope", prepared_bpe, block_size=32, pos="rope")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Era uma vez\n\nA cidade\n", encoding="utf-8")
    code, out, err = run_cli(["generate", run, "--compare", tmp_path / "rope", "--prompts", prompts, "-n", "4",
                              "--markdown"], capsys)
    assert code == 0, err
    assert out.count("**Prompt:**") == 2 and out.count("|---|---|") == 2
    # each column is headed by its run's path from the folder the runs share
    shared = os.path.commonpath([run.parent, tmp_path])
    assert f"| {run.relative_to(shared)} | {(tmp_path / 'rope').relative_to(shared)} |" in out
    code, out, err = run_cli(["generate", run, "--compare", tmp_path / "rope", run, "--prompt", "Era"], capsys)
    assert code == 2 and "a folder is given twice" in err
    # one run's Markdown is a one-column table of the text it writes alone
    code, alone, _ = run_cli(["generate", run, "--prompt", "Era", "-n", "4"], capsys)
    code, out, err = run_cli(["generate", run, "--prompt", "Era", "-n", "4", "--markdown"], capsys)
    from capitu.pages import markdown_comparison

    table = markdown_comparison([{"prompt": "Era", "outputs": {run.name: alone.removesuffix("\n")}}])
    assert code == 0 and out == table + "\n" and table.startswith(f"**Prompt:** Era\n\n| {run.name} |\n|---|\n"), err
    for more in (["--compare", tmp_path / "rope"], ["--markdown"]):  # --stream was ignored there without a word
        code, _, err = run_cli(["generate", run, "--prompt", "Era", "--stream", *more], capsys)
        assert code == 2 and "--stream prints one run's text as it comes" in err


def test_a_study_is_its_variants_first_seed_runs_side_by_side(run, tmp_path, prepared_bpe, capsys):
    import json

    study = tmp_path / "study"
    (study / "runs").mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"study": {"first_seed": 7}, "variants": [
        {"name": "baseline"}, {"name": "rope"}]}), encoding="utf-8")
    (study / "runs" / "baseline-s7").symlink_to(run)
    make_run(study / "runs" / "rope-s7", prepared_bpe, block_size=32, pos="rope")
    make_run(study / "runs" / "rope-s8", prepared_bpe, block_size=32, pos="rope")  # not the first seed: not shown
    args = ["--prompt", "Era", "-n", "4", "--markdown"]
    code, out, err = run_cli(["generate", study, *args], capsys)
    assert code == 0, err
    code, runs, _ = run_cli(["generate", study / "runs" / "baseline-s7", "--compare", study / "runs" / "rope-s7",
                             *args], capsys)
    assert out == runs and "| baseline-s7 | rope-s7 |" in out  # the same table as the runs given one by one
    code, _, err = run_cli(["generate", study, "--prompt", "Era", "--stream"], capsys)
    assert code == 2 and "not with several runs (--compare, a study)" in err


@pytest.mark.parametrize("args, message", [
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "nan"], "--temperature"),
    (["--top-k", "-3"], "--top-k"),
    (["--repetition-penalty", "0"], "--repetition-penalty"),
    (["-n", "0"], "--new-tokens"),
    (["--prompt", "palavra " * 200], "learned positions stop at 32"),
])
def test_cli_bad_input_exits_2(run, capsys, args, message):
    code, out, err = run_cli(["generate", run, *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_missing_or_corrupt_run_exits_2(run, tmp_path, capsys):
    code, _, err = run_cli(["generate", tmp_path / "nowhere", "--prompt", "a"], capsys)
    assert code == 2 and "not a capitu run" in err
    (run / "model.safetensors").write_bytes(b"\x00" * 40)
    code, _, err = run_cli(["generate", run, "--prompt", "a"], capsys)
    assert code == 2 and "corrupt" in err


def test_draw_follows_the_distribution_and_never_draws_a_zero():
    """Inverse-CDF sampling against the probabilities themselves: a chi-square test on 20,000
    draws, and the tokens of probability 0 (what top-k and top-p leave) never come out."""
    from scipy.stats import chisquare

    from capitu.generate import draw

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20000, 1)
    counts = torch.bincount(draw(probs, torch.Generator().manual_seed(0)), minlength=5)
    assert counts[1] == counts[4] == 0
    assert chisquare(counts[[0, 2, 3]].numpy(), 20000 * np.array([0.5, 0.3, 0.2])).pvalue > 1e-3
    one_hot = torch.zeros(3, 7)
    one_hot[0, 6], one_hot[1, 0], one_hot[2, 3] = 1, 1, 1  # certain tokens, at both ends and inside
    assert draw(one_hot, None).tolist() == [6, 0, 3]


def test_temperature_one_samples_the_softmax():
    """A two-token distribution, probabilities 0.8 / 0.2: the drawn frequencies match."""
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]]).repeat(4000, 1)
    drawn = next_tokens(logits, torch.empty(4000, 0, dtype=torch.long), Sampling(temperature=1.0),
                        torch.Generator().manual_seed(0))
    assert (drawn == 0).float().mean().item() == pytest.approx(0.8, abs=0.03)


MODERN = dict(norm="rmsnorm", mlp="swiglu", qk_norm=True, logit_softcap=15.0, tie_embeddings=False, bias=False)


POSITIONS = ["learned", "sinusoidal", "rope", "alibi", "none"]
STATIC_CASES = (  # (pos, n_kv_head: 0 multi-head, 2 grouped-query, 1 multi-query, batch, knobs)
    [(pos, kv, 2, {}) for pos in POSITIONS for kv in (0, 2, 1)]  # every variant, fused CPU loops
    + [(pos, kv, 2, MODERN) for pos in ("rope", "alibi") for kv in (0, 2, 1)]  # the ladder's knobs
    + [(pos, 0, 16, {}) for pos in ("learned", "rope", "alibi")]  # batch 16: the library's GEMM
)


@pytest.mark.parametrize("pos, n_kv_head, batch, knobs", STATIC_CASES,
                         ids=[f"{p}-kv{kv}-b{b}{'-modern' if k else ''}" for p, kv, b, k in STATIC_CASES])
def test_compiled_decoding_equals_eager_and_the_reference(pos, n_kv_head, batch, knobs):
    from capitu.config import ModelConfig
    from capitu.models import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=97, block_size=24, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32,
                            pos=pos, **knobs)).eval()
    prompt = torch.randint(0, 97, (batch, 5))
    decoder = Decoder(model, batch)
    assert decoder.reduction == (batch <= 8)
    assert decoder.path == "compiled" and decoder.compile_s > 0
    reference = recomputed_greedy(model, prompt, 40)  # past the context of 24: the shift runs too
    with torch._dynamo.config.patch(error_on_recompile=True):  # every step runs the one graph compiled above
        assert torch.equal(generate(decoder, prompt, 40, Sampling(temperature=0)), reference)
    assert torch.equal(generate(eager(model, batch), prompt, 40, Sampling(temperature=0)), reference)
    with torch.no_grad():
        decoder.prefill(prompt, 0)
        for t in range(5, 23):  # one step at a time, compiled against a full forward of the sequence so far
            torch.testing.assert_close(decoder.step(reference[:, t:t + 1], t), model(reference[:, :t + 1])[0][:, -1],
                                       atol=1e-5, rtol=1e-5)
