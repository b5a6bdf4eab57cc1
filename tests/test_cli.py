import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, make_run, run_cli


def readme_commands() -> set[str]:
    """The subcommands the README's command table documents."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return {line.split("`capitu ")[1].split()[0].rstrip("`") for line in text.splitlines()
            if line.startswith("| `capitu ")}


def test_help_lists_exactly_the_documented_commands_and_each_has_help(capsys):
    documented = readme_commands()
    assert len(documented) >= 10  # the table was found and read
    code, out, _ = run_cli(["--help"], capsys)
    listed = {line.split()[0] for line in out.split("commands:")[1].splitlines()[1:] if line.startswith("    ")
              and not line.startswith("     ")}
    assert code == 0 and listed == documented
    for command in sorted(documented):
        code, out, _ = run_cli([command, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: capitu {command}"), command


def test_prepare_help(capsys):
    code, out, _ = run_cli(["prepare", "--help"], capsys)
    assert code == 0 and "--vocab-size" in out and "--source" in out


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "capitu", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("capitu ")


def test_a_reader_that_stops_reading_is_not_an_error():
    # `capitu models | head -1`: the pipe is closed before capitu writes, as head closes it after its line
    process = subprocess.Popen([sys.executable, "-m", "capitu", "models"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    error = process.stderr.read()
    assert process.wait() == 1 and error == ""


def test_missing_required_argument_exits_2(capsys):
    code, _, err = run_cli(["prepare"], capsys)
    assert code == 2 and "--source" in err


@pytest.mark.parametrize("args, message", [
    (["prepare"], "the following arguments are required: --source"),
    (["train", "--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["models", "--vocab-size", "1000000000"], "vocab size must be between 1 and"),
    (["bench", "--preset", "tiny", "--prompt-length", "1000"], "a prompt of 1000 tokens leaves no room"),
])
def test_bad_input_is_one_line_with_exit_2(args, message, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err and "Traceback" not in err


def models_table(out: str) -> dict[str, list[int]]:
    """`capitu models`'s rows: variant -> its numbers, the GFLOP column left out (it is rounded)."""
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[1][0].isdigit()]
    return {row[0]: [int(n.replace(",", "")) for n in row[1:3] + row[4:]] for row in rows}


def test_models_counts_parameters_as_the_formula_does(capsys):
    # one block of width d: attention 4d^2 + 4d, MLP 8d^2 + 5d, two layer norms 4d; the tiny preset
    # has RoPE (no position table), an untied head and a final layer norm
    code, out, _ = run_cli(["models", "--grid", "core", "--set", "model.n_layer=1"], capsys)
    d, vocab = 256, 4096
    assert code == 0 and "model.n_layer=1" in out
    embedding = vocab * d  # non-embedding counts all but the input table: the untied output layer is counted
    assert models_table(out)["baseline"][:2] == [2 * embedding + 12 * d * d + 15 * d, embedding + 12 * d * d + 15 * d]


def test_models_of_a_study_are_the_ones_it_trains_on_its_budget(capsys):
    # the tiny study pins GPT-2's model (learned positions, tied embeddings, 2 layers 128 wide, 64 tokens)
    # and gives every variant the baseline's 900,000 training FLOPs (in whole 1,024-token steps)
    code, out, _ = run_cli(["models", "--study", "--preset", "tiny"], capsys)
    table = models_table(out)
    d, vocab, context, steps = 128, 4096, 64, 1024
    assert code == 0 and list(table) == ["baseline", "rope", "alibi", "gqa", "mqa", "ffn"]
    assert table["baseline"][0] == vocab * d + context * d + 2 * (12 * d * d + 13 * d) + 2 * d
    assert table["rope"][0] == table["baseline"][0] - context * d
    assert table["baseline"][-1] == round(900_000 / steps) * steps
    from capitu.config import load_config
    from capitu.models import build_model
    from capitu.study.config import load_study
    from capitu.study.variants import variant_config
    study, variants = load_study("tiny")
    base = load_config("tiny", overrides=[*study.set, f"model.vocab_size={vocab}"])
    for variant in variants:
        flops = build_model(variant_config(base, variant).model).flops_per_token()
        spent = table[variant.name][-1] * flops
        assert abs(spent - 900_000 * build_model(base.model).flops_per_token()) <= steps * flops / 2
    code, out, _ = run_cli(["models", "--study", "--preset", "tiny", "--json"], capsys)  # the same numbers
    rows = {v["name"]: [v["params"], v["non_embedding_params"], v["kv_bytes_per_token_fp32"],
                        v["kv_bytes_per_token_bf16"], v["train_tokens"]] for v in json.loads(out)["variants"]}
    assert code == 0 and rows == table
    code, out, _ = run_cli(["models", "--study", "--preset", "tiny", "--vocab-size", "8192"], capsys)  # another data's
    assert code == 0 and models_table(out)["baseline"][0] == table["baseline"][0] + (8192 - vocab) * d
    code, out, _ = run_cli(["models", "--study", "--preset", "small"], capsys)  # a seconds budget: measured later
    assert code == 0 and "measured when the study starts" in out and "train tokens" not in out


def test_eval_of_an_empty_text_is_a_clear_error(tmp_path, prepared_char, capsys):
    make_run(tmp_path / "run", prepared_char)
    (tmp_path / "empty.txt").write_text("   \n\n", encoding="utf-8")
    code, _, err = run_cli(["eval", tmp_path / "run", "--text", tmp_path / "empty.txt"], capsys)
    assert code == 2 and "holds no text to score" in err, err


# --- Every bad input, through the real command line -------------------------------------------
# Each case runs `python -m capitu ARGS` in a subprocess and must answer exit 2, one line on
# stderr naming the problem, no traceback, and write nothing: its scratch folder (its --out and
# anything else it was pointed at) is unchanged, and so is the shared world below.
# {data}: a prepared char folder; {bpe}: a prepared BPE folder; {w}: the shared world (runs, bad
# files, bad HF folders: see `world`); {t}: the case's own scratch folder (holding file.txt and
# full/notes.txt); /proc/capitu: a place no one can write.
HOSTILE = [
    # argument parsing
    ("no-command", [], "the following arguments are required: COMMAND"),
    ("unknown-command", ["nonsense"], "invalid choice: 'nonsense'"),
    ("prepare-no-source", ["prepare", "--out", "{t}/out"], "the following arguments are required: --source"),
    ("steps-not-int", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "many"], "invalid int value"),
    ("tokenizer-choice", ["prepare", "--source", "{w}/texts", "--out", "{t}/out", "--tokenizer", "wordpiece"],
     "invalid choice: 'wordpiece'"),
    ("eval-split-choice", ["eval", "{w}/run", "--split", "dev"], "invalid choice: 'dev'"),
    ("export-format", ["export", "{w}/bpe_run", "--format", "onnx", "--out", "{t}/out"], "invalid choice: 'onnx'"),
    ("study-no-data", ["study", "--out", "{t}/out"], "one of the arguments --data --source is required"),
    # prepare
    ("prepare-missing-source", ["prepare", "--source", "{t}/missing", "--out", "{t}/out"], "source not found"),
    ("prepare-empty-source", ["prepare", "--source", "{w}/blank", "--out", "{t}/out"],
     "need at least 3 distinct documents"),
    ("prepare-binary-strict", ["prepare", "--source", "{w}/binary", "--out", "{t}/out", "--strict"], "binary.txt"),
    ("prepare-out-file", ["prepare", "--source", "{w}/texts", "--out", "{t}/file.txt"], "is a file"),
    ("prepare-out-foreign", ["prepare", "--source", "{w}/texts", "--out", "{t}/full"], "holds something else"),
    ("prepare-out-unwritable", ["prepare", "--source", "{w}/texts", "--out", "/proc/capitu"], "cannot write to /proc"),
    ("prepare-vocab-0", ["prepare", "--source", "{w}/texts", "--out", "{t}/out", "--vocab-size", "0"],
     "vocab size must be between"),
    ("prepare-vocab-huge", ["prepare", "--source", "{w}/texts", "--out", "{t}/out", "--vocab-size", "1000000000"],
     "vocab size must be between"),
    ("prepare-val-fraction", ["prepare", "--source", "{w}/texts", "--out", "{t}/out", "--val-fraction", "0.9"],
     "--val-fraction must be between 0 and 0.5"),
    ("prepare-test-fraction", ["prepare", "--source", "{w}/texts", "--out", "{t}/out", "--test-fraction", "-0.1"],
     "--test-fraction must be between 0 and 0.5"),
    ("prepare-min-paragraph", ["prepare", "--source", "{w}/texts", "--out", "{t}/out", "--min-paragraph-chars",
                               "0"], "--min-paragraph-chars must be at least 1"),
    ("prepare-other-data", ["prepare", "--source", "{w}/texts", "--out", "{data}"], "prepared from other inputs"),
    # train: budgets and settings
    ("train-steps-negative", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "-5"],
     "--steps must be positive, got -5"),
    ("train-steps-zero", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "0"], "--steps must be positive"),
    ("train-tokens-negative", ["train", "--data", "{data}", "--out", "{t}/out", "--tokens", "-100"],
     "--tokens must be positive"),
    ("train-time-zero", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--time", "0"],
     "--time must be positive"),
    ("train-micro-batch-0", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                             "optim.micro_batch=0"], "optim.micro_batch must be positive, got 0"),
    ("train-checkpoint-every-0", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                                  "run.checkpoint_every=0"], "run.checkpoint_every must be positive"),
    ("train-eval-every-0", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                            "run.eval_every=0"], "run.eval_every must be positive"),
    ("train-log-every-0", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                           "run.log_every=0"], "run.log_every must be positive"),
    ("train-lr-negative", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set", "optim.lr=-1"],
     "optim.lr must be positive"),
    ("train-dropout", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                       "model.dropout=1.5"], "model.dropout must be"),
    ("train-n-embd-0", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set", "model.n_embd=0"],
     "model.n_embd must be positive"),
    ("train-heads", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set", "model.n_head=5"],
     "must be divisible by model.n_head"),
    ("train-kv-heads", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                        "model.n_kv_head=3"], "must be divisible by model.n_kv_head"),
    ("train-unknown-key", ["train", "--data", "{data}", "--out", "{t}/out", "--set", "model.colour=red"],
     "unknown config key 'model.colour'"),
    ("train-section-set", ["train", "--data", "{data}", "--out", "{t}/out", "--set", "model=big"],
     "model is a section"),
    ("train-set-no-equals", ["train", "--data", "{data}", "--out", "{t}/out", "--set", "model.pos"],
     "--set expects key=value"),
    ("train-set-wrong-type", ["train", "--data", "{data}", "--out", "{t}/out", "--set", "model.n_layer=four"],
     "model.n_layer must be of type int"),
    ("train-pos", ["train", "--data", "{data}", "--out", "{t}/out", "--set", "model.pos=spiral"],
     "model.pos must be one of"),
    ("train-optimizer", ["train", "--data", "{data}", "--out", "{t}/out", "--set", "optim.name=bogus"],
     "optim.name must be one of adamw, muon"),
    ("train-dtype", ["train", "--data", "{data}", "--out", "{t}/out", "--set", "run.dtype=fp8"],
     "run.dtype must be one of"),
    ("train-context-too-long", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                                "model.block_size=100000000"], "longer than the train split"),
    ("train-vocab-too-small", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--set",
                               "model.vocab_size=3"], "smaller than the tokenizer's"),
    ("train-device", ["train", "--data", "{data}", "--out", "{t}/out", "--steps", "2", "--device", "tpu9"],
     "unknown device 'tpu9'"),
    ("train-preset", ["train", "--data", "{data}", "--out", "{t}/out", "--preset", "huge"], "unknown preset 'huge'"),
    ("train-config-missing", ["train", "--data", "{data}", "--out", "{t}/out", "--config", "{t}/missing.toml"],
     "config file not found"),
    ("train-config-bad-toml", ["train", "--data", "{data}", "--out", "{t}/out", "--config", "{w}/bad.toml"],
     "invalid TOML"),
    ("train-no-data", ["train", "--out", "{t}/out", "--steps", "2"], "--data is required"),
    ("train-data-missing", ["train", "--data", "{t}/missing", "--out", "{t}/out", "--steps", "2"],
     "data folder not found"),
    ("train-data-not-prepared", ["train", "--data", "{t}/full", "--out", "{t}/out", "--steps", "2"],
     "data folder not found or not prepared"),
    # train: output folders and resume
    ("train-out-file", ["train", "--data", "{data}", "--out", "{t}/file.txt", "--steps", "2"], "is a file"),
    ("train-out-not-empty", ["train", "--data", "{data}", "--out", "{t}/full", "--steps", "2"], "is not empty"),
    ("train-out-existing-run", ["train", "--data", "{data}", "--out", "{w}/trained", "--steps", "2"],
     "already holds a run"),
    ("train-out-unwritable", ["train", "--data", "{data}", "--out", "/proc/capitu", "--steps", "2"],
     "cannot write to /proc"),
    ("train-resume-nothing", ["train", "--out", "{t}/out", "--resume"], "nothing to resume"),
    ("train-resume-not-a-run", ["train", "--out", "{t}/full", "--resume"], "no checkpoint"),
    ("train-resume-damaged", ["train", "--out", "{w}/damaged", "--resume", "--steps", "4"],
     "no complete checkpoint: step-00000002 (train_state.pt is"),
        # eval
    ("eval-missing-run", ["eval", "{t}/missing"], "is not a capitu run or model folder"),
    ("eval-file", ["eval", "{t}/file.txt"], "is not a capitu run or model folder"),
    ("eval-corrupt-config", ["eval", "{w}/corrupt_config"], "config.json: corrupt"),
    ("eval-foreign-config", ["eval", "{w}/foreign_config"], "not a capitu model config"),
    ("eval-garbage-weights", ["eval", "{w}/garbage_weights"], "corrupt or unreadable weights"),
    ("generate-edited-config", ["generate", "{w}/edited_config"],
     "edited_config/config.json: model.n_embd (64) must be divisible by model.n_head (3)"),
    ("eval-wrong-shapes", ["eval", "{w}/wrong_shapes"], "weights do not match the config: mis-shaped"),
    ("eval-empty-text", ["eval", "{w}/run", "--text", "{w}/blank/empty.txt"], "holds no text to score"),
    ("eval-missing-text", ["eval", "{w}/run", "--text", "{t}/missing.txt"], "source not found"),
    ("eval-lengths-words", ["eval", "{w}/run", "--lengths", "long"], "--lengths expects comma-separated integers"),
    ("eval-lengths-zero", ["eval", "{w}/run", "--lengths", "0"], "--lengths must be positive"),
    ("eval-split-and-text", ["eval", "{w}/run", "--split", "val", "--text", "{w}/texts"], "give --split or --text"),
    ("eval-stride", ["eval", "{w}/run", "--stride", "-1"], "--stride must be between 1 and"),
    ("eval-data-gone", ["eval", "{w}/orphan"], "data folder"),
    ("eval-imported-no-data", ["eval", "{w}/imported"], "names no data folder (an imported model has none)"),
    ("eval-a-study", ["eval", "{w}/study"], "it holds a study: give one of its runs, such as"),
    ("pairs-missing", ["pairs", "--ud", "{t}/missing.conllu", "--out", "{t}/p.jsonl"], "cannot read"),
    ("pairs-not-conllu", ["pairs", "--ud", "{t}/file.txt", "--out", "{t}/p.jsonl"], "not CoNLL-U"),
    ("eval-pairs-not-pairs", ["eval", "{w}/run", "--pairs", "{t}/file.txt"], "cannot read pairs"),
    ("references-no-data", ["references", "--data", "{t}/missing"], "data folder not found"),
    ("references-a-run", ["references", "--data", "{w}/run"], "not found or not prepared"),
    ("references-empty-text", ["references", "--data", "{bpe}", "--text", "{w}/blank/empty.txt"],
     "holds no text to score"),
    ("references-new-tokens", ["references", "--data", "{bpe}", "-n", "0"], "-n/--new-tokens must be at least 1"),
    # generate
    ("generate-no-run", ["generate", "--prompt", "Era"], "give a run folder"),
    ("generate-missing-run", ["generate", "{t}/missing"], "is not a capitu run or model folder"),
    ("generate-a-study", ["generate", "{w}/study"], "study.json is not a study plan capitu can read (no 'variants'); "
     "give one of its runs, such as"),
    ("generate-new-tokens", ["generate", "{w}/run", "-n", "0"], "-n/--new-tokens must be at least 1"),
    ("generate-temperature", ["generate", "{w}/run", "--temperature", "-1"], "--temperature must be 0"),
    ("generate-top-k", ["generate", "{w}/run", "--top-k", "-3"], "--top-k must be 0"),
    ("generate-top-p", ["generate", "{w}/run", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ("generate-penalty", ["generate", "{w}/run", "--repetition-penalty", "0"], "--repetition-penalty must be positive"),
    ("generate-prompts-missing", ["generate", "{w}/run", "--prompts", "{t}/missing.txt"], "cannot read prompts"),
    ("generate-prompts-empty", ["generate", "{w}/run", "--prompts", "{w}/blank/empty.txt"], "holds no prompts"),
    ("generate-no-tokenizer", ["generate", "{w}/no_tokenizer"], "has no tokenizer.json"),
    # bench
    ("bench-nothing", ["bench"], "give either a run folder or --preset"),
    ("bench-both", ["bench", "{w}/run", "--preset", "tiny"], "give either a run folder or --preset"),
    ("bench-batch-sizes", ["bench", "--preset", "tiny", "--batch-sizes", "a,b"], "--batch-sizes expects"),
    ("bench-batch-zero", ["bench", "--preset", "tiny", "--batch-sizes", "0"], "positive batch sizes"),
    ("bench-steps-zero", ["bench", "--preset", "tiny", "--train-steps", "0"], "at least one training step"),
    ("bench-prompt-too-long", ["bench", "--preset", "tiny", "--prompt-length", "1000"],
     "a prompt of 1000 tokens leaves no room"),
    ("bench-set-on-run", ["bench", "{w}/run", "--set", "model.n_layer=3"], "--set applies to --preset only"),
    # models
    ("models-vocab-huge", ["models", "--vocab-size", "1000000000"], "vocab size must be between"),
    ("models-vocab-zero", ["models", "--vocab-size", "0"], "vocab size must be between"),
    ("models-preset", ["models", "--preset", "huge"], "unknown preset 'huge'"),
    ("models-grid", ["models", "--grid", "nosuch"], "grid 'nosuch' is neither"),
    ("models-study-config", ["models", "--config", "{t}/missing.toml"], "config file not found"),
    ("models-set", ["models", "--study", "--set", "model.n_head=3"], "must be divisible by model.n_head (3)"),
    ("models-study-vocab-set", ["models", "--study", "--set", "model.vocab_size=8192"],
     "a study's vocabulary is its data's, not a --set: give --vocab-size"),
    ("votes-no-folder", ["votes", "{t}/mistyped-study"], "mistyped-study is not a folder"),
    # export
    ("export-out-file", ["export", "{w}/bpe_run", "--out", "{t}/file.txt"], "is a file"),
    ("export-out-not-empty", ["export", "{w}/bpe_run", "--out", "{t}/full"], "is not empty"),
    ("export-out-unwritable", ["export", "{w}/bpe_run", "--out", "/proc/capitu"], "cannot write to /proc"),
    ("export-missing-run", ["export", "{t}/missing", "--out", "{t}/out"], "is not a capitu run or model folder"),
    ("export-unfinished-study", ["export", "{w}/study", "--out", "{t}/out"], "has no results.json yet: finish the "
     "study"),
    ("export-char-run", ["export", "{w}/run", "--out", "{t}/out"], "HF export needs the run's BPE tokenizer"),
    ("export-alibi-run", ["export", "{w}/alibi_run", "--out", "{t}/out"],
     "no HF equivalent: as GPT-2, model.pos = 'alibi' (needs 'learned')"),
    # serve and votes
    ("serve-nothing", ["serve", "{t}/full"], "is not a capitu run or model folder"),
    ("serve-file", ["serve", "{t}/file.txt"], "is not a capitu run or model folder"),
    ("serve-garbage-weights", ["serve", "{w}/garbage_weights"], "corrupt or unreadable weights"),
    ("serve-a-bad-study", ["serve", "{w}/study"], "study.json is not a study plan capitu can read"),
    ("serve-port", ["serve", "{w}/run", "--port", "70000"], "--port must be between 1 and 65535"),
    ("votes-missing", ["votes", "{t}/nowhere/votes.sqlite"], "no votes file"),
    ("votes-not-sqlite", ["votes", "{t}/file.txt"], "not a capitu votes file"),
    # import
    ("import-out-run", ["import", "{w}/hf", "--out", "{w}/trained"], "is not empty"),
    ("import-out-file", ["import", "{w}/hf", "--out", "{t}/file.txt"], "is a file"),
    ("import-out-unwritable", ["import", "{w}/hf", "--out", "/proc/capitu"], "cannot write to /proc"),
    ("import-missing", ["import", "{t}/missing", "--out", "{t}/out"], "cannot read config.json"),
    ("import-a-run", ["import", "{w}/run", "--out", "{t}/out"], "is a capitu model already"),
    ("import-config-list", ["import", "{w}/hf_list", "--out", "{t}/out"], "expected a JSON object, got list"),
    ("import-config-not-json", ["import", "{w}/hf_not_json", "--out", "{t}/out"], "cannot read config.json"),
    ("import-no-n-layer", ["import", "{w}/hf_no_layers", "--out", "{t}/out"], "n_layer must be a positive integer"),
    ("import-n-layer-word", ["import", "{w}/hf_word_layers", "--out", "{t}/out"], "n_layer must be a positive integer"),
    ("import-huge", ["import", "{w}/hf_huge", "--out", "{t}/out"], "where config.json needs"),
    ("import-mislabelled", ["import", "{w}/hf_llama", "--out", "{t}/out"],
     "config.json: hidden_size must be a positive integer, got None"),
    ("import-bert", ["import", "{w}/hf_bert", "--out", "{t}/out"],
     "model_type is 'bert'; capitu imports gpt2, gpt_neox and llama"),
    ("import-no-weights", ["import", "{w}/hf_no_weights", "--out", "{t}/out"], "no model.safetensors"),
    ("import-garbage-weights", ["import", "{w}/hf_garbage", "--out", "{t}/out"], "corrupt or unreadable weights"),
    ("import-layers", ["import", "{w}/hf_more_layers", "--out", "{t}/out"], "layers where config.json says n_layer"),
    # study
    ("study-out-file", ["study", "--data", "{bpe}", "--out", "{t}/file.txt"], "is a file"),
    ("study-out-foreign", ["study", "--data", "{bpe}", "--out", "{t}/full"], "is not empty"),
    ("study-out-unwritable", ["study", "--data", "{bpe}", "--out", "/proc/capitu"], "cannot write to /proc"),
    ("study-data-not-prepared", ["study", "--data", "{t}/full", "--out", "{t}/out"], "is not a prepared folder"),
    ("study-seeds", ["study", "--data", "{bpe}", "--out", "{t}/out", "--seeds", "0"], "study.seeds must be at least 1"),
    ("study-grid", ["study", "--data", "{bpe}", "--out", "{t}/out", "--grid", "nosuch"], "grid 'nosuch' is neither"),
    ("study-preset", ["study", "--data", "{bpe}", "--out", "{t}/out", "--preset", "huge"], "unknown preset 'huge'"),
    ("study-config-missing", ["study", "--data", "{bpe}", "--out", "{t}/out", "--config", "{t}/missing.toml"],
     "config file not found"),
    ("study-config-table", ["study", "--data", "{bpe}", "--out", "{t}/out", "--config", "{w}/odd_study.toml"],
     "unknown table(s) model"),
]
# a device this machine lacks: one line from every command that takes --device, before it starts anything
LACKING = [device for device, there in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available()))
           if not there]
HOSTILE += [(f"{command}-{device}", [command, "{w}/run", *more, "--device", device], f"device {device} asked for")
            for device in LACKING
            for command, more in (("eval", []), ("generate", ["--prompt", "Era"]), ("bench", []), ("serve", []))]


def snapshot(folder: Path) -> dict:
    """Every file and folder under `folder`, with the size and modification time of files."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def hf_variant(world: Path, name: str, change) -> None:
    folder = world / name
    shutil.copytree(world / "hf", folder)
    config = json.loads((folder / "config.json").read_text())
    content = change(config)
    (folder / "config.json").write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.fixture(scope="module")
def world(tmp_path_factory, prepared_char, prepared_bpe) -> Path:
    """The shared things the hostile inputs point at (none of them may change)."""
    from capitu.config import load_config
    from capitu.hf import export_hf, import_hf
    from capitu.train.trainer import train

    w = tmp_path_factory.mktemp("world")
    (w / "texts").mkdir()
    (w / "texts" / "a.txt").write_text("Era uma vez um rapaz que morava no Rio de Janeiro.\n" * 20, encoding="utf-8")
    (w / "blank").mkdir()
    (w / "blank" / "empty.txt").write_text("  \n\n", encoding="utf-8")
    (w / "binary").mkdir()
    (w / "binary" / "binary.txt").write_bytes(bytes(range(256)) * 8)
    make_run(w / "run", prepared_char)
    make_run(w / "bpe_run", prepared_bpe)
    make_run(w / "alibi_run", prepared_bpe, pos="alibi")
    make_run(w / "no_tokenizer", prepared_char)
    (w / "no_tokenizer" / "tokenizer.json").unlink()
    make_run(w / "orphan", prepared_char)
    config = json.loads((w / "orphan" / "config.json").read_text())
    config["config"]["data"]["path"] = str(w / "gone")
    (w / "orphan" / "config.json").write_text(json.dumps(config))
    shutil.copytree(w / "run", w / "corrupt_config")
    (w / "corrupt_config" / "config.json").write_text("{")
    shutil.copytree(w / "run", w / "foreign_config")
    (w / "foreign_config" / "config.json").write_text('{"format": "other/1"}')
    shutil.copytree(w / "run", w / "edited_config")
    edited = json.loads((w / "run" / "config.json").read_text())
    edited["model"].update(n_embd=64, n_head=3)
    (w / "edited_config" / "config.json").write_text(json.dumps(edited))
    shutil.copytree(w / "run", w / "garbage_weights")
    (w / "garbage_weights" / "model.safetensors").write_bytes(b"\x00" * 64)
    make_run(w / "wrong_shapes", prepared_char, n_embd=32)
    shutil.copy(w / "run" / "config.json", w / "wrong_shapes" / "config.json")
    train(load_config("tiny", overrides=[*TINY, f'data.path="{prepared_char}"', "run.steps=2"]), w / "trained",
          progress=False)
    shutil.copytree(w / "trained", w / "damaged")
    with open(w / "damaged" / "checkpoints" / "step-00000002" / "train_state.pt", "r+b") as state:
        state.truncate(100)
    export_hf(w / "bpe_run", w / "hf")
    import_hf(w / "hf", w / "imported")
    shutil.copytree(w / "run", w / "study" / "runs" / "baseline-s1")
    (w / "study" / "study.json").write_text("{}")
    hf_variant(w, "hf_list", lambda c: [c])
    hf_variant(w, "hf_not_json", lambda c: "{not json")
    hf_variant(w, "hf_no_layers", lambda c: {k: v for k, v in c.items() if k != "n_layer"})
    hf_variant(w, "hf_word_layers", lambda c: {**c, "n_layer": "four"})
    hf_variant(w, "hf_huge", lambda c: {**c, "n_embd": 1 << 20, "vocab_size": 1 << 20, "n_layer": 400})
    hf_variant(w, "hf_llama", lambda c: {**c, "model_type": "llama"})
    hf_variant(w, "hf_bert", lambda c: {**c, "model_type": "bert"})
    hf_variant(w, "hf_more_layers", lambda c: {**c, "n_layer": c["n_layer"] + 4})
    hf_variant(w, "hf_no_weights", lambda c: c)
    (w / "hf_no_weights" / "model.safetensors").unlink()
    hf_variant(w, "hf_garbage", lambda c: c)
    (w / "hf_garbage" / "model.safetensors").write_bytes(b"garbage" * 10)
    (w / "bad.toml").write_text("[model\nn_layer = ")
    (w / "odd_study.toml").write_text("[model]\nn_layer = 2\n")
    return w


def run_hostile(case, world, data, bpe, scratch: Path) -> dict:
    name, args, _ = case
    scratch.mkdir()
    (scratch / "file.txt").write_text("Olá.\n", encoding="utf-8")
    (scratch / "full").mkdir()
    (scratch / "full" / "notes.txt").write_text("not capitu's", encoding="utf-8")
    before = snapshot(scratch)
    args = [a.format(w=world, t=scratch, data=data, bpe=bpe) for a in args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "capitu", *args], capture_output=True, text=True, cwd=scratch,
                            env=env, timeout=300)
    return {"code": result.returncode, "err": result.stderr, "unchanged": snapshot(scratch) == before}


@pytest.fixture(scope="module")
def hostile_results(world, prepared_char, prepared_bpe, tmp_path_factory):
    """Every case of HOSTILE, run two at a time; and the shared world before and after."""
    shared = {"world": world, "data": prepared_char, "bpe": prepared_bpe}
    before = {name: snapshot(folder) for name, folder in shared.items()}
    scratch = tmp_path_factory.mktemp("hostile")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {case[0]: pool.submit(run_hostile, case, world, prepared_char, prepared_bpe, scratch / case[0])
                   for case in HOSTILE}
        results = {name: future.result() for name, future in futures.items()}
    results["shared unchanged"] = [name for name, folder in shared.items() if snapshot(folder) != before[name]]
    return results


@pytest.mark.parametrize("name, args, message", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_input_gets_one_line_exit_2_and_writes_nothing(name, args, message, hostile_results):
    result = hostile_results[name]
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2, result["err"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("capitu: error: ") and message in lines[0], result["err"][-3000:]
    assert "Traceback" not in result["err"] and result["unchanged"]


def test_hostile_inputs_leave_the_shared_runs_and_data_as_they_were(hostile_results):
    assert hostile_results["shared unchanged"] == []


def test_every_command_meets_hostile_input():
    tried = {args[0] for _, args, _ in HOSTILE if args}
    assert readme_commands() <= tried, readme_commands() - tried


def test_eval_prints_its_result_when_it_cannot_save_it(tmp_path, prepared_char, capsys, monkeypatch):
    import capitu.paths

    def refuse(path, content):
        raise PermissionError(13, "Permission denied", str(path))

    make_run(tmp_path / "run", prepared_char)
    monkeypatch.setattr(capitu.paths, "atomic_write_json", refuse)
    code, out, err = run_cli(["eval", tmp_path / "run", "--json", "--quiet"], capsys)
    assert code == 2 and json.loads(out)["bpb"] > 0
    assert err.startswith("capitu: error: could not save") and "printed above" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "eval_test.json").exists()
