import pytest

from capitu.config import load_config, preset_names
from capitu.errors import UserError


def test_presets_and_overrides_layer_in_order(tmp_path):
    assert {"tiny", "small", "gpt2"} <= set(preset_names())
    file = tmp_path / "c.toml"
    file.write_text("[model]\nn_layer = 3\npos = 'alibi'\n[optim]\nlr = 1\n")
    config = load_config("tiny", file, ["model.pos=rope", "model.rope_base=500", "run.compile=true"])
    assert config.model.n_layer == 3 and config.model.pos == "rope" and config.model.rope_base == 500.0
    assert config.optim.lr == 1.0 and config.run.compile is True
    assert config.model.n_embd == 256 and config.model.tie_embeddings is False  # from the preset
    file.write_bytes(b"\xef\xbb\xbf" + file.read_bytes())  # saved by Notepad: a byte-order mark first
    assert load_config("tiny", file).model.n_layer == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.colour=blue"], "unknown config key 'model.colour'"),
        (["model.n_layer=two"], "model.n_layer must be of type int"),
        (["model.n_kv_head=3"], "must be divisible by model.n_kv_head"),
        (["model.pos=spiral"], "model.pos must be one of"),
        (["model=1"], "model is a section"),
        (["nonsense"], "--set expects key=value"),
    ],
)
def test_bad_overrides_are_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config("tiny", overrides=overrides)


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(UserError, match="unknown preset"):
        load_config("huge")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(UserError, match="invalid TOML"):
        load_config(None, tmp_path / "bad.toml")


@pytest.mark.parametrize("override, message", [
    ("optim.micro_batch=0", "optim.micro_batch must be positive, got 0"),
    ("run.checkpoint_every=0", "run.checkpoint_every must be positive, got 0"),
    ("run.eval_every=0", "run.eval_every must be positive, got 0"),
    ("run.log_every=0", "run.log_every must be positive, got 0"),
    ("run.steps=-5", "run.steps must be >= 0, got -5"),
    ("run.tokens=-100", "run.tokens must be >= 0, got -100"),
    ("optim.lr=0", "optim.lr must be positive, got 0.0"),
    ("optim.beta2=1.5", "optim.beta2 must be in [0, 1), got 1.5"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio must be in [0, 1], got 2.0"),
    ("model.dropout=1", "model.dropout must be in [0, 1), got 1.0"),
    ("model.n_kv_head=-1", "model.n_kv_head must be >= 0, got -1"),
    ("run.dtype=float8", "run.dtype must be one of auto, float32, bfloat16, float16, got 'float8'"),
])
def test_every_numeric_setting_is_range_checked(override, message):
    with pytest.raises(UserError) as error:
        load_config("tiny", overrides=[override])
    assert str(error.value) == message


def test_every_numeric_field_declares_a_range():
    import dataclasses

    from capitu.config import ModelConfig, OptimConfig, RunConfig

    for section in (ModelConfig, OptimConfig, RunConfig):
        numeric = {f.name for f in dataclasses.fields(section) if f.type in ("int", "float")}
        assert numeric == set(section.RANGES), section.__name__
