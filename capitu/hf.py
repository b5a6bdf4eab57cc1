"""Interop with HF transformers (GPT2LMHeadModel, GPTNeoXForCausalLM, LlamaForCausalLM), without importing it.

The GPT-2-equivalent configuration (learned positions, multi-head attention, biases, tied embeddings) maps one to
one: the same parameter names, with HF's Conv1D weights stored transposed ([in, out]) where nn.Linear stores [out,
in]; it exports and imports. A Llama-shaped model (RoPE, RMSNorm, SwiGLU, no biases; tied or not; MHA, GQA or MQA)
exports as LlamaForCausalLM: the fused query-key-value and gate-up matrices are split, and capitu's RoPE already
rotates the two halves of each head as HF's `rotate_half` does. GPT-2's blocks with RoPE (tied or not, multi-head)
export as GPTNeoXForCausalLM (sequential residuals, RoPE over whole heads), the fused query-key-value matrix
regrouped head by head.

capitu reads a prompt as the start of a document, end-of-text first; the exported tokenizer adds that end-of-text
itself (as its BOS), and reads text in NFC, so HF's `generate` and pipelines condition as `capitu generate` does."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import namedtuple
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, normalizers, processors

from capitu.checkpoint import (
    MODEL_FORMAT,
    load_model,
    load_state,
    load_weights,
    save_model,
    unique_state_dict,
    weight_shapes,
)
from capitu.config import LAYER_NORM_EPS, RMS_EPS, ModelConfig
from capitu.errors import UserError
from capitu.folders import TOKENIZER, RunFolder
from capitu.models import GPT
from capitu.paths import atomic_write_json, check_output, staged_folder
from capitu.tokenizer import EOT, EOT_ID, load_tokenizer

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some versions save


GPT2_BLOCK = {"kind": "gpt", "bias": True, "norm": "layernorm", "mlp": "gelu", "qk_norm": False, "logit_softcap": 0.0}


def gpt2_differences(config: ModelConfig) -> list[str]:
    """What keeps `config` from being GPT-2 (nothing: it exports as GPT2LMHeadModel)."""
    return differences(config, {**GPT2_BLOCK, "pos": "learned", "n_kv_head": config.n_head, "tie_embeddings": True})


def neox_differences(config: ModelConfig) -> list[str]:
    """What keeps `config` from being GPT-NeoX, GPT-2's blocks with RoPE over whole heads, tied
    or not (nothing: it exports as GPTNeoXForCausalLM)."""
    return differences(config, {**GPT2_BLOCK, "pos": "rope", "n_kv_head": config.n_head})


def llama_differences(config: ModelConfig) -> list[str]:
    """What keeps `config` from being Llama (nothing: it exports as LlamaForCausalLM)."""
    wanted = {"kind": "gpt", "pos": "rope", "bias": False, "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False,
              "logit_softcap": 0.0}
    return differences(config, wanted)


def differences(config: ModelConfig, wanted: dict) -> list[str]:
    actual = {**vars(config), "n_kv_head": config.kv_heads}
    return [f"model.{key} = {actual[key]!r} (needs {value!r})" for key, value in wanted.items() if actual[key] != value]


def check_exportable(config: ModelConfig) -> str:
    """"gpt2", "gpt_neox" or "llama", or a one-line error naming what has no HF equivalent."""
    missing = {kind: architecture.differences(config) for kind, architecture in ARCHITECTURES.items()}
    for kind, problems in missing.items():
        if not problems:
            return kind
    raise UserError("no HF equivalent: " + "; ".join(f"as {ARCHITECTURES[kind].name}, " + ", ".join(problems)
                                                      for kind, problems in missing.items()))


def gpt2_config(config: ModelConfig, eot_id: int = EOT_ID) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
        "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": config.hidden,
        "activation_function": "gelu_new", "resid_pdrop": config.dropout, "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout, "layer_norm_epsilon": config.eps, "initializer_range": 0.02,
        "scale_attn_weights": True, "tie_word_embeddings": True, "bos_token_id": eot_id, "eos_token_id": eot_id,
    }


def gpt2_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under GPT2LMHeadModel's names and layouts (tied output left out)."""
    return {name: tensor.t().contiguous() if name.endswith(CONV1D) else tensor
            for name, tensor in unique_state_dict(model).items()}


def llama_config(config: ModelConfig, eot_id: int = EOT_ID) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd, "intermediate_size": config.hidden, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim,
        "hidden_act": "silu", "max_position_embeddings": config.block_size, "rms_norm_eps": config.eps,
        "rope_theta": config.rope_base,  # transformers < 5
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},  # transformers >= 5
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02, "bos_token_id": eot_id, "eos_token_id": eot_id,
    }


def llama_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under LlamaForCausalLM's names: c_attn split into q, k and v
    (n_head, n_kv_head, n_kv_head heads), c_fc into gate and up (gate rows first)."""
    c = model.config
    state = unique_state_dict(model)
    q, kv = c.n_head * c.head_dim, c.kv_heads * c.head_dim
    out = {"model.embed_tokens.weight": state["transformer.wte.weight"],
           "model.norm.weight": state["transformer.ln_f.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(c.n_layer):
        block, layer = f"transformer.h.{i}.", f"model.layers.{i}."
        qkv = state[block + "attn.c_attn.weight"]
        gate_up = state[block + "mlp.c_fc.weight"]
        out.update({
            layer + "input_layernorm.weight": state[block + "ln_1.weight"],
            layer + "self_attn.q_proj.weight": qkv[:q], layer + "self_attn.k_proj.weight": qkv[q:q + kv],
            layer + "self_attn.v_proj.weight": qkv[q + kv:],
            layer + "self_attn.o_proj.weight": state[block + "attn.c_proj.weight"],
            layer + "post_attention_layernorm.weight": state[block + "ln_2.weight"],
            layer + "mlp.gate_proj.weight": gate_up[:c.hidden], layer + "mlp.up_proj.weight": gate_up[c.hidden:],
            layer + "mlp.down_proj.weight": state[block + "mlp.c_proj.weight"],
        })
    return {name: tensor.contiguous() for name, tensor in out.items()}


def neox_config(config: ModelConfig, eot_id: int = EOT_ID) -> dict:
    return {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd, "intermediate_size": config.hidden, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "hidden_act": "gelu_new", "max_position_embeddings": config.block_size,
        "rotary_pct": 1.0, "rotary_emb_base": config.rope_base,  # transformers >= 5 reads these too
        "use_parallel_residual": False, "attention_bias": True, "layer_norm_eps": config.eps,
        "hidden_dropout": 0.0, "attention_dropout": 0.0, "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02, "bos_token_id": eot_id, "eos_token_id": eot_id,
    }


def neox_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The model's weights under GPTNeoXForCausalLM's names: c_attn's rows, query, key and
    value blocks of n_head heads each, regrouped head by head (each head's q, k, v together)."""
    c = model.config
    state = unique_state_dict(model)

    def by_head(qkv: torch.Tensor) -> torch.Tensor:  # (3 C, ...) as [q; k; v] -> (3 C, ...) as [h0 q k v; h1 ...]
        return qkv.reshape(3, c.n_head, c.head_dim, *qkv.shape[1:]).transpose(0, 1).reshape(qkv.shape)

    out = {"gpt_neox.embed_in.weight": state["transformer.wte.weight"]}
    if not c.tie_embeddings:
        out["embed_out.weight"] = state["lm_head.weight"]  # lm_head in transformers >= 5, which renames it
    names = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_attn": "attention.query_key_value",
             "attn.c_proj": "attention.dense", "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
    for i in range(c.n_layer):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                tensor = state[f"transformer.h.{i}.{ours}.{kind}"]
                out[f"gpt_neox.layers.{i}.{theirs}.{kind}"] = by_head(tensor) if ours == "attn.c_attn" else tensor
    for kind in ("weight", "bias"):
        out[f"gpt_neox.final_layer_norm.{kind}"] = state[f"transformer.ln_f.{kind}"]
    return {name: tensor.contiguous() for name, tensor in out.items()}


def export_tokenizer(source: Path, target: Path, eot_id: int) -> None:
    """The run's tokenizer, made to put end-of-text before every text it encodes (HF adds
    special tokens by default; capitu's own encoding asks for none), and to read text in NFC, as
    capitu reads a prompt (generate.as_trained)."""
    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B:1", special_tokens=[(EOT, eot_id)])
    tokenizer.save(str(target))


def export_hf(run: Path, out: Path) -> str:
    """Write a folder that GPT2LMHeadModel, GPTNeoXForCausalLM or LlamaForCausalLM .from_pretrained (and
    AutoTokenizer) load; it appears whole or not at all. Returns the architecture."""
    check_output(out, new=True)
    model, _ = load_model(run)
    kind = check_exportable(model.config)
    tokenizer = RunFolder(run).tokenizer_path
    run_tokenizer = load_tokenizer(tokenizer) if tokenizer.is_file() else None
    if run_tokenizer is None or run_tokenizer.kind != "bpe":
        raise UserError("HF export needs the run's BPE tokenizer.json (a char tokenizer has no HF equivalent)")
    eot_id = run_tokenizer.eot_id  # 0 for capitu's own; an imported GPT-2's is 50256
    weights, config = ARCHITECTURES[kind].weights(model), ARCHITECTURES[kind].config(model.config, eot_id)
    with staged_folder(out) as staging:
        save_file(weights, str(staging / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(staging / "config.json", config)
        export_tokenizer(tokenizer, staging / TOKENIZER, eot_id)  # HF's file has our file's name
        special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
        atomic_write_json(staging / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size,
            "clean_up_tokenization_spaces": False, **special,
        })
        atomic_write_json(staging / "special_tokens_map.json", special)
    return config["architectures"][0]


def check_header(path: Path, hf: dict) -> None:
    """The config's shapes against the safetensors header, before any model is built: a config
    with huge dimensions must not allocate them."""
    shapes = {name.removeprefix("transformer."): shape for name, shape in weight_shapes(path).items()}
    expected = {"wte.weight": (hf["vocab_size"], hf["n_embd"]), "wpe.weight": (hf["n_positions"], hf["n_embd"]),
                "h.0.mlp.c_fc.weight": (hf["n_embd"], hf.get("n_inner") or 4 * hf["n_embd"])}
    for name, shape in expected.items():
        if shapes.get(name) != shape:
            raise UserError(f"{path}: {name} is {shapes.get(name)} where config.json needs {shape}")
    layers = {int(name.split(".")[1]) for name in shapes if name.startswith("h.")}
    if layers != set(range(hf["n_layer"])):
        raise UserError(f"{path}: holds {len(layers)} layers where config.json says n_layer {hf['n_layer']}")


def positive_ints(hf: dict, folder: Path, keys: tuple[str, ...]) -> None:
    for key in keys:
        if type(hf.get(key)) is not int or hf[key] < 1:
            raise UserError(f"{folder}/config.json: {key} must be a positive integer, got {hf.get(key)!r}")


def refuse_unlike(hf: dict, folder: Path, wanted: dict, kind: str) -> None:
    """A one-line UserError naming the settings (HF's defaults where absent) that capitu's models
    cannot reproduce."""
    unlike = [f"{key} = {hf.get(key, default)!r} (needs {value!r})" for key, (value, default) in wanted.items()
              if hf.get(key, default) != value]
    if unlike:
        raise UserError(f"{folder}: a {kind} capitu cannot run: {', '.join(unlike)}")


def norm_eps(hf: dict, folder: Path, key: str, usual: float) -> float:
    """The config's epsilon as capitu's model.norm_eps: 0.0 where it is the norm's usual one."""
    value = hf.get(key, usual)
    if type(value) not in (int, float) or not value > 0:
        raise UserError(f"{folder}/config.json: {key} must be a positive number, got {value!r}")
    return 0.0 if value == usual else float(value)


def rope_settings(hf: dict) -> tuple[float, float]:
    """(base, share of each head rotated), wherever the transformers version put them."""
    nested = hf.get("rope_parameters") or {}
    base = hf.get("rotary_emb_base", hf.get("rope_theta", nested.get("rope_theta", 10000.0)))
    share = hf.get("rotary_pct", hf.get("partial_rotary_factor", nested.get("partial_rotary_factor", 1.0)))
    return float(base), float(share)


def gpt2_import(hf: dict, folder: Path) -> ModelConfig:
    """GPT-2, as OpenAI's checkpoints and capitu's exports have it (its shapes checked against the weights)."""
    if hf.get("activation_function", "gelu_new") != "gelu_new":
        raise UserError(f"{folder}: activation {hf['activation_function']} is not GPT-2's gelu_new")
    positive_ints(hf, folder, ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"))
    if hf.get("n_inner") is not None and (type(hf["n_inner"]) is not int or hf["n_inner"] < 1):
        raise UserError(f"{folder}/config.json: n_inner must be a positive integer or null, got {hf['n_inner']!r}")
    check_header(folder / "model.safetensors", hf)
    return ModelConfig(
        kind="gpt", vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_embd=hf["n_embd"], pos="learned",
        mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"], dropout=0.0, bias=True, tie_embeddings=True,
        norm_eps=norm_eps(hf, folder, "layer_norm_epsilon", LAYER_NORM_EPS),
    )


def gpt2_state(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """gpt2_weights's inverse: the same names (some files leave out the `transformer.` prefix), Conv1D's
    weights transposed back, the mask buffers some versions save left out."""
    state = {}
    for name, tensor in weights.items():
        if name.endswith(HF_BUFFERS):
            continue
        name = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    return state


LLM_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings")


def neox_import(hf: dict, folder: Path) -> ModelConfig:
    """GPT-NeoX as capitu exports it: sequential residuals, RoPE over whole heads, GPT-2's blocks."""
    positive_ints(hf, folder, LLM_SIZES)
    base, share = rope_settings(hf)
    refuse_unlike({**hf, "rotary_pct": share}, folder, {
        "use_parallel_residual": (False, True), "rotary_pct": (1.0, 1.0), "hidden_act": ("gelu_new", "gelu"),
        "attention_bias": (True, True)}, "GPT-NeoX")
    return ModelConfig(
        kind="gpt", vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"], pos="rope",
        rope_base=base, mlp_hidden=hf["intermediate_size"], dropout=0.0, bias=True,
        norm_eps=norm_eps(hf, folder, "layer_norm_eps", LAYER_NORM_EPS),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def neox_state(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """neox_weights's inverse: each head's q, k, v rows back into [q; k; v]."""
    def by_kind(qkv: torch.Tensor) -> torch.Tensor:  # (3 C, ...) as [h0 q k v; h1 ...] -> as [q; k; v]
        return qkv.reshape(config.n_head, 3, config.head_dim, *qkv.shape[1:]).transpose(0, 1).reshape(qkv.shape)

    names = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "attention.query_key_value": "attn.c_attn",
             "attention.dense": "attn.c_proj", "mlp.dense_h_to_4h": "mlp.c_fc", "mlp.dense_4h_to_h": "mlp.c_proj"}
    state = {"transformer.wte.weight": weights.get("gpt_neox.embed_in.weight"),
             "lm_head.weight": weights.get("embed_out.weight", weights.get("lm_head.weight"))}
    for kind in ("weight", "bias"):
        state[f"transformer.ln_f.{kind}"] = weights.get(f"gpt_neox.final_layer_norm.{kind}")
    for i in range(config.n_layer):
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                state[f"transformer.h.{i}.{ours}.{kind}"] = weights.get(f"gpt_neox.layers.{i}.{theirs}.{kind}")
        for kind in ("weight", "bias"):
            fused = state[f"transformer.h.{i}.attn.c_attn.{kind}"]
            if fused is not None:  # a missing one is named by load_state
                state[f"transformer.h.{i}.attn.c_attn.{kind}"] = by_kind(fused)
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def llama_import(hf: dict, folder: Path) -> ModelConfig:
    """Llama as capitu exports it: RMSNorm, SwiGLU, no biases, RoPE over whole heads."""
    positive_ints(hf, folder, LLM_SIZES)
    base, _ = rope_settings(hf)
    nested = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    refuse_unlike({**hf, "rope type": nested.get("rope_type", nested.get("type", "default"))}, folder, {
        "hidden_act": ("silu", "silu"), "attention_bias": (False, False), "mlp_bias": (False, False),
        "rope type": ("default", "default"),
        "head_dim": (hf["hidden_size"] // hf["num_attention_heads"], hf["hidden_size"] // hf["num_attention_heads"])},
        "Llama")
    kv_heads = hf.get("num_key_value_heads") or hf["num_attention_heads"]  # 0 in capitu: as many as heads
    return ModelConfig(
        kind="gpt", vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=kv_heads if kv_heads != hf["num_attention_heads"] else 0, n_embd=hf["hidden_size"],
        pos="rope", rope_base=base, norm="rmsnorm", norm_eps=norm_eps(hf, folder, "rms_norm_eps", RMS_EPS),
        mlp="swiglu", mlp_hidden=hf["intermediate_size"], dropout=0.0, bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def llama_state(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """llama_weights's inverse: q, k, v into c_attn; gate, up into c_fc (gate rows first)."""
    def joined(*names: str) -> torch.Tensor | None:
        parts = [weights.get(name) for name in names]
        return None if any(part is None for part in parts) else torch.cat(parts)

    state = {"transformer.wte.weight": weights.get("model.embed_tokens.weight"),
             "transformer.ln_f.weight": weights.get("model.norm.weight"),
             "lm_head.weight": weights.get("lm_head.weight")}
    for i in range(config.n_layer):
        block, layer = f"transformer.h.{i}.", f"model.layers.{i}."
        state.update({
            block + "ln_1.weight": weights.get(layer + "input_layernorm.weight"),
            block + "attn.c_attn.weight": joined(*(layer + f"self_attn.{x}_proj.weight" for x in "qkv")),
            block + "attn.c_proj.weight": weights.get(layer + "self_attn.o_proj.weight"),
            block + "ln_2.weight": weights.get(layer + "post_attention_layernorm.weight"),
            block + "mlp.c_fc.weight": joined(layer + "mlp.gate_proj.weight", layer + "mlp.up_proj.weight"),
            block + "mlp.c_proj.weight": weights.get(layer + "mlp.down_proj.weight"),
        })
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


# each HF model_type capitu writes and reads: its name, what keeps a config from it, and the two ways across
Architecture = namedtuple("Architecture", "name differences config weights import_config import_weights")
ARCHITECTURES = {
    "gpt2": Architecture("GPT-2", gpt2_differences, gpt2_config, gpt2_weights, gpt2_import, gpt2_state),
    "gpt_neox": Architecture("GPT-NeoX", neox_differences, neox_config, neox_weights, neox_import, neox_state),
    "llama": Architecture("Llama", llama_differences, llama_config, llama_weights, llama_import, llama_state),
}


def check_size(path: Path, config: ModelConfig) -> None:
    """A config that describes more parameters than the weights file holds is refused before the
    model is built (counted on the meta device, which allocates nothing)."""
    with torch.device("meta"):  # two models of one and two blocks: a block's share, without building them all
        one, two = (GPT(dataclasses.replace(config, n_layer=n)).num_params() for n in (1, 2))
    wanted = one + (config.n_layer - 1) * (two - one)
    held = sum(map(math.prod, weight_shapes(path).values()))
    if wanted > held:
        raise UserError(f"{path}: holds {held:,} numbers where config.json describes a model of {wanted:,} "
                        "parameters")


def import_hf(folder: Path, out: Path) -> None:
    """Bring an HF GPT-2 checkpoint folder, or a GPT-NeoX or Llama one shaped as capitu exports
    them (config.json + model.safetensors), in as a capitu model folder (written whole or not at all)."""
    check_output(out, new=True)
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"{folder}: cannot read config.json: {error}") from None
    if not isinstance(hf, dict):
        raise UserError(f"{folder}/config.json: expected a JSON object, got {type(hf).__name__}")
    if hf.get("format") == MODEL_FORMAT:
        raise UserError(f"{folder} is a capitu model already: eval, generate, serve and bench take it as it is "
                        "(capitu export makes an HF folder of it)")
    if hf.get("model_type") not in ARCHITECTURES:
        raise UserError(f"{folder}: model_type is {hf.get('model_type')!r}; capitu imports gpt2, gpt_neox and llama")
    if not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder}: no model.safetensors")
    architecture = ARCHITECTURES[hf["model_type"]]
    config = architecture.import_config(hf, folder)
    try:
        config.validate()
    except UserError as error:  # sizes that do not make a model (a width not divisible by the heads)
        raise UserError(f"{folder}/config.json: {error}") from None
    check_size(folder / "model.safetensors", config)
    model = GPT(config)
    state = architecture.import_weights(load_weights(folder / "model.safetensors"), config)
    load_state(model, {k: v.float() if v is not None else None for k, v in state.items()}, folder / "model.safetensors")
    with staged_folder(out) as staging:
        save_model(staging, model, {"imported_from": str(folder)})
        if (folder / TOKENIZER).is_file():
            shutil.copyfile(folder / TOKENIZER, RunFolder(staging).tokenizer_path)
