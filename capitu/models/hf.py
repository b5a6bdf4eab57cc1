"""Interop with HF transformers' GPT2LMHeadModel, without importing transformers.

The GPT-2-equivalent configuration (learned positions, multi-head attention, biases, tied
embeddings) maps one to one: the same parameter names, with HF's Conv1D weights stored
transposed ([in, out]) where nn.Linear stores [out, in].
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from capitu.checkpoint import TOKENIZER, load_model, load_state, load_weights, save_model, unique_state_dict
from capitu.config import ModelConfig
from capitu.errors import UserError
from capitu.models import GPT
from capitu.paths import atomic_write_json, check_output, staged_folder
from capitu.tokenizer import EOT, load_tokenizer

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some versions save


def check_exportable(config: ModelConfig) -> None:
    problems = []
    if config.kind != "gpt":
        problems.append("model.kind must be gpt")
    if config.pos != "learned":
        problems.append(f"model.pos is {config.pos}, GPT-2 has learned positions")
    if config.kv_heads != config.n_head:
        problems.append(f"model.n_kv_head is {config.kv_heads}, GPT-2 has multi-head attention ({config.n_head})")
    if not config.bias:
        problems.append("GPT-2 has biases (model.bias = true)")
    if not config.tie_embeddings:
        problems.append("GPT-2 ties input and output embeddings")
    if problems:
        raise UserError("only the GPT-2-equivalent configuration exports to HF: " + "; ".join(problems))


def hf_config(config: ModelConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.hidden,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under GPT2LMHeadModel's names and layouts (tied output left out)."""
    return {name: tensor.t().contiguous() if name.endswith(CONV1D) else tensor
            for name, tensor in unique_state_dict(model).items()}


def export_hf(run: Path, out: Path) -> None:
    """Write a folder that GPT2LMHeadModel.from_pretrained (and AutoTokenizer) load; it
    appears whole or not at all."""
    check_output(out, new=True)
    model, _ = load_model(run)
    check_exportable(model.config)
    if not (run / TOKENIZER).is_file() or load_tokenizer(run / TOKENIZER).kind != "bpe":
        raise UserError("HF export needs the run's BPE tokenizer.json (a char tokenizer has no HF equivalent)")
    with staged_folder(out) as staging:
        save_file(hf_state_dict(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(staging / "config.json", hf_config(model.config))
        shutil.copyfile(run / TOKENIZER, staging / TOKENIZER)
        special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
        atomic_write_json(staging / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size, **special,
        })
        atomic_write_json(staging / "special_tokens_map.json", special)


def check_header(path: Path, hf: dict) -> None:
    """The config's shapes against the safetensors header, before any model is built: a config
    with huge dimensions must not allocate them."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            shapes = {name.removeprefix("transformer."): tuple(weights.get_slice(name).get_shape())
                      for name in weights.keys()}
    except (OSError, SafetensorError) as error:
        raise UserError(f"{path}: not a readable safetensors file: {error}") from None
    expected = {"wte.weight": (hf["vocab_size"], hf["n_embd"]), "wpe.weight": (hf["n_positions"], hf["n_embd"]),
                "h.0.mlp.c_fc.weight": (hf["n_embd"], hf.get("n_inner") or 4 * hf["n_embd"])}
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise UserError(f"{path}: {name} is {shapes.get(name)} where config.json needs {shape}")
    layers = {int(name.split(".")[1]) for name in shapes if name.startswith("h.")}
    if layers != set(range(hf["n_layer"])):
        raise UserError(f"{path}: holds {len(layers)} layers where config.json says n_layer {hf['n_layer']}")


def import_hf(folder: Path, out: Path) -> None:
    """Bring an HF GPT-2 checkpoint folder (config.json + model.safetensors) in as a capitu
    model folder (written whole or not at all)."""
    check_output(out, new=True)
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: cannot read config.json: {error}") from None
    if not isinstance(hf, dict):
        raise UserError(f"{folder}/config.json: expected a JSON object, got {type(hf).__name__}")
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{folder}: model_type is {hf.get('model_type')!r}, only gpt2 can be imported")
    if hf.get("activation_function", "gelu_new") != "gelu_new":
        raise UserError(f"{folder}: activation {hf['activation_function']} is not GPT-2's gelu_new")
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder}: no model.safetensors")
    for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
        if type(hf.get(key)) is not int or hf[key] < 1:
            raise UserError(f"{folder}/config.json: {key} must be a positive integer, got {hf.get(key)!r}")
    if hf.get("n_inner") is not None and (type(hf["n_inner"]) is not int or hf["n_inner"] < 1):
        raise UserError(f"{folder}/config.json: n_inner must be a positive integer or null, got {hf['n_inner']!r}")
    check_header(folder / "model.safetensors", hf)
    config = ModelConfig(
        kind="gpt", vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_embd=hf["n_embd"], pos="learned",
        mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"], dropout=0.0, bias=True, tie_embeddings=True,
    )
    model = GPT(config)
    state = {}
    for name, tensor in load_weights(folder / "model.safetensors").items():
        if name.endswith(HF_BUFFERS):
            continue
        name = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    load_state(model, {k: v.float() if v is not None else None for k, v in state.items()}, folder / "model.safetensors")
    with staged_folder(out) as staging:
        save_model(staging, model, {"imported_from": str(folder)})
        if (folder / TOKENIZER).is_file():
            shutil.copyfile(folder / TOKENIZER, staging / TOKENIZER)
