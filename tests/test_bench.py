import json
import os

import pytest
from conftest import make_run, run_cli

from capitu.bench import SDPA_KERNELS

FAST = ["--train-steps", "1", "--repeats", "1", "--new-tokens", "4", "--batch-sizes", "1,3"]


def check_result(result, kv_heads, n_layer, head_dim):
    assert result["train_tok_s"] > 0 and result["device"] == "cpu"
    assert set(result["prefill_tok_s"]) == set(result["decode_tok_s"]) == {"1", "3"}
    assert all(v > 0 for v in [*result["prefill_tok_s"].values(), *result["decode_tok_s"].values()])
    # peak RSS of each measuring subprocess: at least what it held when it started
    for task in ("train", "generate"):
        assert result[f"peak_{task}_bytes"] >= result[f"{task}_start_bytes"] > 10 * 2**20
    kv = result["kv_bytes_per_token"]
    assert kv["shapes"] == kv["allocated"] == 2 * n_layer * kv_heads * head_dim * 4
    known = set(SDPA_KERNELS.values())
    assert set(result["sdpa_kernel_train"].split(", ")) <= known
    assert set(result["sdpa_kernel_decode"].split(", ")) <= known


def test_bench_preset_json(capsys):
    code, out, err = run_cli(["bench", "--preset", "tiny", "--set", "model.vocab_size=300", "--set", "model.n_layer=1",
                              "--set", "model.n_kv_head=2", "--set", "model.block_size=32", "--set",
                              "optim.micro_batch=2", "--json", "--no-compile", *FAST], capsys)
    assert code == 0, err
    result = json.loads(out)
    check_result(result, kv_heads=2, n_layer=1, head_dim=256 // 4)
    assert result["train_batch"] == [2, 32] and result["prompt_length"] == 16
    assert result["train_accumulation"] == 2048 // (2 * 32)  # the tiny preset's batch_tokens, as the trainer steps
    for task in ("train", "generate"):  # what the rest of the machine did meanwhile
        load = result[f"{task}_load"]
        assert load["cores"] == os.cpu_count() and (load["others"] is None or 0 <= load["others"] <= 1)
    assert result["decode_path"] == "eager" and result["compile_s"] == 0
    assert result["decode_path_reason"] == "compiling turned off"


def test_the_bench_times_the_trainers_optimizer_step_with_all_its_micro_batches(monkeypatch):
    import torch

    import capitu.train.trainer as trainer
    from capitu.bench import BenchOptions, measure_training
    from capitu.config import load_config

    shapes, real = [], trainer.optimizer_step

    def counted(model, optimizer, micro_batches, *args, **kwargs):
        shapes.append([tuple(x.shape) for x, _ in micro_batches])
        return real(model, optimizer, micro_batches, *args, **kwargs)

    monkeypatch.setattr(trainer, "optimizer_step", counted)
    config = load_config("tiny", overrides=["model.vocab_size=300", "model.n_layer=1", "model.block_size=32",
                                            "optim.micro_batch=2", "optim.batch_tokens=256"])
    result = measure_training(config, torch.device("cpu"), BenchOptions(train_steps=2), kernel=False)
    # 256 tokens a step in micro-batches of 2 x 32: 4 of them, then one optimizer update, as the trainer does
    assert result["train_accumulation"] == 4 and result["train_batch"] == [2, 32]
    assert shapes == [[(2, 32)] * 4] * (3 + 2)  # three warm-up steps, then the two timed


def test_bench_decodes_compiled_by_default_and_reports_its_path(capsys):
    code, out, err = run_cli(["bench", "--preset", "tiny", "--set", "model.vocab_size=300", "--set", "model.n_layer=1",
                              "--set", "model.block_size=32", "--json", *FAST], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["decode_path"] == "compiled" and result["compile_s"] > 0 and "decode_path_reason" not in result
    assert set(result["decode_tok_s"]) == {"1", "3"}


def test_bench_run_table(tmp_path, prepared_char, capsys):
    make_run(tmp_path / "run", prepared_char, pos="alibi")
    code, out, err = run_cli(["bench", tmp_path / "run", *FAST], capsys)
    assert code == 0, err
    assert "decode, batch 3" in out and "KV cache per token" in out and "decode path" in out
    assert "other programs" in out and ("quiet" in out or "BUSY" in out)
    assert any(f"SDPA {kernel}" in out for kernel in SDPA_KERNELS.values())


@pytest.mark.parametrize("args, message", [
    (["--preset", "tiny", "--batch-sizes", "a"], "--batch-sizes"),
    ([], "either a run folder or --preset"),
    (["--preset", "tiny", "--train-steps", "0"], "at least one training step"),
    (["--preset", "tiny", "--prompt-length", "120", "--new-tokens", "10"], "exceed the context 128"),
    (["--preset", "tiny", "--prompt-length", "250"], "leaves no room for 2 new tokens"),
])
def test_bench_bad_input_exits_2(capsys, args, message):
    code, _, err = run_cli(["bench", *args, "--set", "model.n_layer=1"] if "--preset" in args else ["bench", *args],
                           capsys)
    assert code == 2 and message in err, err
