"""The output layer and cross-entropy fused, a chunk of rows at a time.

At the widths capitu trains on a laptop the output layer and its softmax are most of a training step: unfused, the
(tokens x vocabulary) logits are written, read by log-softmax, written again, and read twice more in the backward
pass. Here each chunk of rows computes its logits, its loss and, since the loss is the end of the graph, its
gradients at once, while the chunk is still in cache (the method of Liger-Kernel's fused linear cross-entropy). The
full logits never exist. The loss is the mean over tokens, as `F.cross_entropy`."""

from __future__ import annotations

import torch


def chunk_rows(vocab: int, device_type: str) -> int:
    """Rows per chunk. On a CPU, 256: fewer leave the matmuls too thin, many more fall out of cache
    (docs/measurements.md); on a GPU, chunks of up to 2^28 logits (1 GiB in fp32) bound the memory."""
    return 256 if device_type == "cpu" else max(256, 2**28 // vocab)


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype, rows, softcap):
        """hidden (N, C), weight (V, C), targets (N,) -> mean loss; the gradients are kept.
        With `softcap` C > 0 the logits z are C * tanh(z / C)."""
        n = hidden.shape[0]
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        softmax_dtype = torch.promote_types(compute_dtype, torch.float32)  # bf16 matmuls, fp32 softmax
        total = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        needs_weight = ctx.needs_input_grad[1]
        grad_weight = torch.zeros(weight.shape, dtype=softmax_dtype, device=weight.device) if needs_weight else None
        for start in range(0, n, rows):
            h_chunk, t_chunk = h[start:start + rows], targets[start:start + rows]
            logits = (h_chunk @ w.t()).to(softmax_dtype)  # (rows, V)
            if softcap:
                logits = torch.tanh(logits.div_(softcap))
                slope = 1 - logits.square()  # d capped / d raw logit
                logits.mul_(softcap)
            # one pass each, in place: shift by the row max, exponentiate once, normalise
            logits.sub_(logits.amax(dim=-1, keepdim=True))
            target_logit = logits.gather(1, t_chunk[:, None]).squeeze(1)
            sums = logits.exp_().sum(dim=-1)
            total += (sums.log() - target_logit).sum()  # log-sum-exp minus the target's logit
            if not needs_grad:
                continue
            # d(mean loss)/d(logits) = (softmax - one_hot) / N
            grad = logits.div_(sums[:, None] * n)
            grad[torch.arange(len(t_chunk), device=grad.device), t_chunk] -= 1.0 / n
            if softcap:
                grad.mul_(slope)
            grad = grad.to(compute_dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + rows] = grad @ w
            if grad_weight is not None:
                grad_weight += grad.t() @ h_chunk
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         softcap: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (soft-capped to (-C, C) by C * tanh(z / C)
    when `softcap` C > 0) against `targets`: hidden (..., C), weight (V, C), targets (...).
    Under autocast the matmuls run in its dtype, the softmax in fp32."""
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    if not torch.is_grad_enabled():  # evaluation: the loss alone, no gradient work
        hidden, weight = hidden.detach(), weight.detach()
    with torch.autocast(device_type, enabled=False):
        return LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                                        compute_dtype, chunk_rows(weight.shape[0], device_type), softcap)
