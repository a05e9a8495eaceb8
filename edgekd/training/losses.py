"""Divergences and entropies for distillation, all from log-probabilities.

Working in log space (log_softmax) keeps the reverse KL finite when a softened
probability underflows to zero. Every function returns one value per sample;
methods decide the weighting, the T^2 factor and the reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=1)


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p || q) = sum_k p_k (log p_k - log q_k)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=1)


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Per-sample Shannon entropy in nats."""
    return -(log_p.exp() * log_p).sum(dim=1)


def forward_weight(
    entropy_gap: torch.Tensor, rule: str, tau: float = 0.1, flipped: bool = False
) -> torch.Tensor:
    """BD-KD's per-sample weight w(i) of the forward KL; the reverse KL gets 1 - w(i).

    entropy_gap = H(student) - H(teacher). A student more certain than its teacher
    (gap < 0) gets forward KL, which is mass-covering and raises its entropy; a
    student less certain (gap > 0) gets reverse KL, which is mode-seeking.
    `flipped` swaps the two (an ablation of the switch's direction).
    """
    if rule == "hard":
        w = (entropy_gap < 0).to(entropy_gap.dtype)
    elif rule == "soft":
        w = torch.sigmoid(-entropy_gap / tau)
    elif rule == "forward":
        w = torch.ones_like(entropy_gap)
    elif rule == "reverse":
        w = torch.zeros_like(entropy_gap)
    else:  # the recipe schema admits only the four rules above
        raise ValueError(f"unknown weighting rule {rule!r}")
    return 1.0 - w if flipped else w
