import pytest
import torch
import torch.nn.functional as F

from capitu.config import ModelConfig
from capitu.models import GPT
from capitu.models.loss import LinearCrossEntropy, linear_cross_entropy


def reference(hidden, weight, targets, softcap=0.0):
    logits = hidden @ weight.t()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


@pytest.mark.parametrize("softcap", [0.0, 3.0])  # off, and tight enough to bend most logits
@pytest.mark.parametrize("rows", [1, 7, 64, 600])  # chunks of one row, uneven chunks, one chunk
def test_loss_and_gradients_equal_unfused_cross_entropy(rows, softcap):
    torch.manual_seed(0)
    hidden = torch.randn(2, 300, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (2, 300))
    fused = LinearCrossEntropy.apply(hidden.view(-1, 16), weight, targets.view(-1), torch.float64, rows, softcap)
    (2.5 * fused).backward()  # a non-unit upstream gradient must scale both gradients
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    expected = reference(hidden, weight, targets, softcap)
    (2.5 * expected).backward()
    assert fused.item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-12)
    assert torch.allclose(grads[1], weight.grad, atol=1e-12)


def test_without_grad_only_the_loss():
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(40, 8), torch.randn(30, 8), torch.randint(0, 30, (40,))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets)
    assert loss.item() == pytest.approx(reference(hidden, weight, targets).item(), rel=1e-6)


def test_bf16_autocast_stays_close_to_fp32():
    torch.manual_seed(2)
    hidden = torch.randn(256, 32, requires_grad=True)
    weight = (0.1 * torch.randn(500, 32)).requires_grad_()
    targets = torch.randint(0, 500, (256,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets)
    assert loss.dtype == torch.float32
    loss.backward()
    assert weight.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(reference(hidden, weight, targets).item(), rel=2e-2)


@pytest.mark.parametrize("softcap", [0.0, 0.5])
def test_model_loss_is_the_cross_entropy_of_its_logits(softcap):
    torch.manual_seed(3)
    config = ModelConfig(vocab_size=97, block_size=16, n_layer=1, n_head=2, n_embd=16, logit_softcap=softcap)
    model = GPT(config).double()
    idx, targets = torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))
    logits, none = model(idx)
    no_logits, loss = model(idx, targets)
    assert none is None and no_logits is None
    assert loss.item() == pytest.approx(F.cross_entropy(logits.view(-1, 97), targets.view(-1)).item(), abs=1e-12)
