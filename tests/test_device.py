import pytest
import torch

from capitu import device as dev


@pytest.mark.parametrize("capability, expected, inference", [((7, 5), "float16", torch.float16),  # T4
                                                             ((7, 0), "float16", torch.float16),  # V100
                                                             ((8, 0), "bfloat16", torch.bfloat16),  # A100
                                                             ((9, 0), "bfloat16", torch.bfloat16)])  # H100
def test_auto_picks_bf16_only_where_the_card_has_it(monkeypatch, capability, expected, inference):
    """torch.cuda.is_bf16_supported() says yes on a T4 (emulated): the compute capability decides."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert dev.resolve_dtype(cuda, "auto") == expected and dev.inference_dtype(cuda) == inference
    assert dev.resolve_dtype(cuda, "float32") == "float32"  # asked for, not chosen


def test_cpu_without_native_bf16_stays_float32_and_float16_scales(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cpu = torch.device("cpu")
    assert dev.resolve_dtype(cpu, "auto") == "float32" and dev.inference_dtype(cpu) == torch.float32
    assert not dev.grad_scaler(cpu, "auto").is_enabled() and dev.grad_scaler(cpu, "float16").is_enabled()
    with dev.autocast_context(cpu, "float16"):
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == torch.float16
