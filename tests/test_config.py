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
    assert config.model.n_embd == 128  # from the preset


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
