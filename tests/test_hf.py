import dataclasses
import json
import unicodedata
from pathlib import Path

import pytest
import torch
import transformers
from conftest import run_cli

from capitu.checkpoint import load_model, save_model
from capitu.config import ModelConfig
from capitu.errors import UserError
from capitu.hf import export_hf, import_hf
from capitu.models import GPT


def hf_model(vocab=128):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_weights_from_hf_give_the_same_logits(tmp_path):
    reference = hf_model()
    reference.save_pretrained(tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "ours")
    model, _ = load_model(tmp_path / "ours")
    idx = torch.randint(0, 128, (2, 40))
    with torch.no_grad():
        expected = reference(idx).logits
    torch.testing.assert_close(model(idx)[0], expected, atol=1e-5, rtol=0)


def gpt2_like_tokenizer(path):
    """A byte-level BPE whose end-of-text is its last id, as in OpenAI's GPT-2 (50256), not capitu's 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["Capitu tinha olhos de ressaca. Era uma vez um rapaz."] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(path))
    return hf.token_to_id("<|endoftext|>"), hf.get_vocab_size()


def test_an_imported_gpt2_keeps_its_end_of_text_id(tmp_path, capsys):
    from capitu.generate import prompt_ids
    from capitu.tokenizer import load_tokenizer

    eot, vocab = gpt2_like_tokenizer(tmp_path / "tokenizer.json")
    assert eot == vocab - 1 > 0
    reference = hf_model(vocab)
    reference.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    import_hf(tmp_path / "hf", tmp_path / "ours")
    tokenizer = load_tokenizer(tmp_path / "ours" / "tokenizer.json")
    ids = prompt_ids(tokenizer, "Capitu tinha")
    assert ids[0] == eot and tokenizer.decode(ids[1:]) == "Capitu tinha"
    # capitu's greedy continuation is HF's from the same end-of-text: the prompt reads as a document's start
    code, out, err = run_cli(["generate", tmp_path / "ours", "--prompt", "Capitu tinha", "-n", "8",
                              "--temperature", "0", "--no-compile"], capsys)
    with torch.no_grad():
        greedy = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=eot,
                                    pad_token_id=eot)[0, len(ids):].tolist()
    assert code == 0 and out.rstrip("\n") == "Capitu tinha" + tokenizer.decode([t for t in greedy if t != eot]), err
    export_hf(tmp_path / "ours", tmp_path / "again")  # and an export of it puts that id first, as its BOS
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "again")
    assert again("Capitu tinha")["input_ids"] == ids
    assert json.loads((tmp_path / "again" / "config.json").read_text())["bos_token_id"] == eot


def test_export_then_import_round_trips(tmp_path, prepared_bpe):
    torch.manual_seed(0)
    vocab = json.loads((prepared_bpe / "meta.json").read_text())["tokenizer"]["vocab_size"]
    model = GPT(ModelConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=32)).eval()
    save_model(tmp_path / "run", model)
    (tmp_path / "run" / "tokenizer.json").write_bytes((prepared_bpe / "tokenizer.json").read_bytes())
    export_hf(tmp_path / "run", tmp_path / "hf")
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, vocab, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx).logits, model(idx)[0], atol=1e-5, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "Não há de consentir? — disse-me ele."
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    import_hf(tmp_path / "hf", tmp_path / "back")
    back, _ = load_model(tmp_path / "back")
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)


@pytest.mark.parametrize("shape", [{"pos": "rope"}, {"pos": "rope", "tie_embeddings": False},
                                   {**LLAMA, "n_kv_head": 2}, {**LLAMA, "tie_embeddings": False}])
def test_gpt_neox_and_llama_exports_import_back(tmp_path, prepared_bpe, shape):
    model, _ = exported_run(tmp_path, prepared_bpe, **shape)
    import_hf(tmp_path / "hf", tmp_path / "back")
    back, _ = load_model(tmp_path / "back")
    assert back.config == dataclasses.replace(model.config, mlp_hidden=model.config.hidden)  # 0: the default width
    for name, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert (tmp_path / "back" / "tokenizer.json").is_file()


def transformers_folder(tmp_path, model) -> Path:
    model.save_pretrained(tmp_path / "theirs")
    return tmp_path / "theirs"


@pytest.mark.parametrize("theirs", [
    lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        use_parallel_residual=False, rotary_pct=1.0, hidden_act="gelu_new", max_position_embeddings=64)),
    lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, rms_norm_eps=1e-6, max_position_embeddings=64)),
    lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(  # SmolLM2's epsilon and tied embeddings
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=64, rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=64)),
])
def test_hf_made_models_of_capitus_shapes_import_with_their_logits(tmp_path, theirs):
    torch.manual_seed(0)
    reference = trained_looking(theirs())
    import_hf(transformers_folder(tmp_path, reference), tmp_path / "ours")
    model, _ = load_model(tmp_path / "ours")
    idx = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], reference(idx).logits, atol=1e-4, rtol=0)


def test_hf_models_capitu_cannot_run_are_refused_in_words(tmp_path, capsys):
    # Pythia's shape: parallel residuals, a quarter of each head rotated; a Llama with biased projections
    neox = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        attention_bias=True))
    for model, named in ((neox, "use_parallel_residual = True (needs False)"),
                         (neox, "rotary_pct = 0.25 (needs 1.0)"), (llama, "attention_bias = True (needs False)")):
        folder = transformers_folder(tmp_path / named[:4], model)
        code, _, err = run_cli(["import", folder, "--out", tmp_path / "out"], capsys)
        assert code == 2 and ("a GPT-NeoX capitu cannot run" in err or "a Llama capitu cannot run" in err), err
        assert named in err and not (tmp_path / "out").exists(), err


def test_unreadable_weights_of_any_architecture_are_one_line(tmp_path, prepared_bpe, capsys):
    exported_run(tmp_path, prepared_bpe, pos="rope")  # GPT-NeoX, whose import reads the header for its size check
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"garbage" * 10)
    code, _, err = run_cli(["import", tmp_path / "hf", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "model.safetensors: corrupt or unreadable weights" in err and len(err.splitlines()) == 1, err


def test_a_config_larger_than_its_weights_is_refused_before_building(tmp_path, prepared_bpe, capsys):
    exported_run(tmp_path, prepared_bpe, **LLAMA)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 100_000}))
    code, _, err = run_cli(["import", tmp_path / "hf", "--out", tmp_path / "out"], capsys)
    assert code == 2 and "where config.json describes a model of" in err, err


@pytest.mark.parametrize("change, named", [
    ({"pos": "alibi"}, "as GPT-NeoX, model.pos = 'alibi' (needs 'rope')"),
    ({"pos": "rope", "n_kv_head": 2}, "as GPT-NeoX, model.n_kv_head = 2 (needs 4)"),
    ({"n_kv_head": 2}, "model.n_kv_head = 2 (needs 4)"),
    ({"bias": False}, "model.bias = False (needs True)"),
    ({"kind": "ffn"}, "model.kind = 'ffn' (needs 'gpt')"),
    ({**LLAMA, "qk_norm": True}, "model.qk_norm = True (needs False)"),
    ({**LLAMA, "logit_softcap": 15.0}, "model.logit_softcap = 15.0 (needs 0.0)"),
    ({**LLAMA, "mlp": "relu2"}, "model.mlp = 'relu2' (needs 'swiglu')"),
])
def test_other_variants_refuse_to_export(tmp_path, change, named, capsys):
    from capitu.models import build_model

    model = build_model(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=16, **change))
    save_model(tmp_path / "run", model)
    code, _, err = run_cli(["export", tmp_path / "run", "--format", "hf", "--out", tmp_path / "hf"], capsys)
    assert code == 2 and err.startswith("capitu: error: no HF equivalent: as GPT-2, ") and named in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "hf").exists()


def trained_looking(model):
    """Random weights of a realistic spread (norm gains too), so that logits vary by token."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def exported_run(tmp_path, prepared_bpe, **changes):
    vocab = json.loads((prepared_bpe / "meta.json").read_text())["tokenizer"]["vocab_size"]
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=32, **changes)
    model = trained_looking(GPT(config))
    save_model(tmp_path / "run", model)
    (tmp_path / "run" / "tokenizer.json").write_bytes((prepared_bpe / "tokenizer.json").read_bytes())
    return model, export_hf(tmp_path / "run", tmp_path / "hf")


def assert_same_model(loaded, model):
    """HF's model gives capitu's logits and greedy continuation (capitu's one token at a time, without a cache)."""
    idx = torch.randint(0, model.config.vocab_size, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx).logits, model(idx)[0], atol=1e-4, rtol=0)
        greedy = loaded.generate(idx[:1, :10], max_new_tokens=30, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, 10:]
    ids = idx[:1, :10]
    for _ in range(30):
        ids = torch.cat([ids, model(ids)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert greedy.tolist() == ids[0, 10:].tolist()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("n_kv_head", [0, 2, 1])  # multi-head, grouped-query, multi-query
def test_llama_shaped_models_export_as_llama(tmp_path, prepared_bpe, tied, n_kv_head):
    model, architecture = exported_run(tmp_path, prepared_bpe, **LLAMA, tie_embeddings=tied, n_kv_head=n_kv_head)
    assert architecture == "LlamaForCausalLM"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert_same_model(loaded, model)


@pytest.mark.parametrize("tied", [True, False])  # the study's RoPE variant; the tiny preset (untied)
def test_gpt2_blocks_with_rope_export_as_gpt_neox(tmp_path, prepared_bpe, tied):
    model, architecture = exported_run(tmp_path, prepared_bpe, pos="rope", tie_embeddings=tied)
    assert architecture == "GPTNeoXForCausalLM"
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert type(loaded).__name__ == "GPTNeoXForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"]  # every weight has its place
    assert_same_model(loaded.eval(), model)


@pytest.mark.parametrize("shape", [{}, {"pos": "rope"}, LLAMA])  # GPT-2, GPT-NeoX and Llama
def test_hf_pipeline_writes_what_capitu_generate_writes(tmp_path, prepared_bpe, shape, capsys):
    exported_run(tmp_path, prepared_bpe, **shape)
    prompt = "Capitu tinha olhos de"
    code, out, err = run_cli(["generate", tmp_path / "run", "--prompt", prompt, "-n", "24", "--temperature", "0",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    hf_text = pipe(prompt, max_new_tokens=24, do_sample=False)[0]["generated_text"]
    assert hf_text == out.rstrip("\n")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer(prompt)["input_ids"][0] == 0  # end-of-text first, as capitu reads a prompt
    accented = "Não há ação sem coração"  # and in NFC, whatever form it is typed in
    assert tokenizer(unicodedata.normalize("NFD", accented))["input_ids"] == tokenizer(accented)["input_ids"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=4, n_embd=16))
    save_model(tmp_path / "run", model)
    (tmp_path / "run" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt or unreadable weights"):
        load_model(tmp_path / "run")
    with pytest.raises(UserError, match="not a capitu run"):
        load_model(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: [c], "expected a JSON object, got list"),
    (lambda c: {k: v for k, v in c.items() if k != "n_layer"}, "n_layer must be a positive integer, got None"),
    (lambda c: {**c, "n_layer": "four"}, "n_layer must be a positive integer, got 'four'"),
    (lambda c: {**c, "n_embd": 2**20, "vocab_size": 2**20}, "wte.weight is (128, 48) where config.json needs"),
    (lambda c: {**c, "n_layer": 3}, "holds 2 layers where config.json says n_layer 3"),
])
def test_bad_hf_folders_are_refused_before_building_a_model(edit, message, tmp_path, capsys):
    hf_model().save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    code, _, err = run_cli(["import", tmp_path / "hf", "--out", tmp_path / "ours"], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "ours").exists()


def test_import_refuses_a_non_empty_out(tmp_path, capsys):
    hf_model().save_pretrained(tmp_path / "hf")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    code, _, err = run_cli(["import", tmp_path / "hf", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "is not empty" in err
    assert (tmp_path / "run" / "config.json").read_text() == "{}"


def test_weight_mismatch_names_the_tensors(tmp_path):
    small = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8))
    save_model(tmp_path / "m", small)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model"]["n_layer"], config["model"]["n_embd"] = 2, 16
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as error:
        load_model(tmp_path / "m")
    text = str(error.value)
    assert "missing transformer.h.1." in text and " and more" in text
    assert "transformer.h.0.attn.c_attn.weight (24, 8) where the config needs (48, 16)" in text


def test_a_finished_study_exports_its_best_variant_with_an_hf_equivalent(prepared_bpe, tmp_path, capsys):
    from conftest import make_run

    study = tmp_path / "study"
    variants = {"alibi": 1.90, "baseline": 2.04, "rope": 1.97}  # mean test bits per byte: alibi best, then rope
    (study / "study.json").parent.mkdir()
    (study / "study.json").write_text(json.dumps({"study": {"first_seed": 3}, "variants": [
        {"name": name} for name in variants]}))
    for name in variants:
        make_run(study / "runs" / f"{name}-s3", prepared_bpe, pos="learned" if name == "baseline" else name)
    code, _, err = run_cli(["export", study, "--out", tmp_path / "hf"], capsys)
    assert code == 2 and "has no results.json yet" in err and not (tmp_path / "hf").exists()
    (study / "results.json").write_text(json.dumps({"variants": [
        {"name": name, "bpb": {"mean": bpb}} for name, bpb in variants.items()]}))
    code, out, err = run_cli(["export", study, "--out", tmp_path / "hf"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("alibi (1 of 3, 1.9000 bits/byte): not exported: no HF equivalent")
    assert lines[1] == "rope: 2 of 3 by test bits per byte (1.9700), the best with an HF equivalent"
    assert lines[2] == f"exported {study / 'runs' / 'rope-s3'} to {tmp_path / 'hf'} (HF GPTNeoXForCausalLM)"
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    reference, _ = load_model(study / "runs" / "rope-s3")
    ids = torch.tensor([[0, 5, 9, 14]])
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, reference(ids)[0], atol=1e-4)
    (study / "results.json").write_text(json.dumps({"variants": [{"name": "ghost", "bpb": {"mean": 1.0}}]}))
    code, _, err = run_cli(["export", study, "--out", tmp_path / "hf2"], capsys)
    assert code == 2 and "names variants that" in err and "ghost" in err and not (tmp_path / "hf2").exists()
