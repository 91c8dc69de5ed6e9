"""probes.verdict_baseline: the unembedding's verdict direction, exactly, and its domain AUROCs."""

from __future__ import annotations

import numpy as np
import torch

from probes.lodo import DomainData
from probes.verdict_baseline import domain_aurocs, verdict_direction


def test_the_direction_gives_the_verdict_logit_difference_up_to_the_norm_scale() -> None:
    rng = np.random.default_rng(0)
    u, g, h = rng.normal(size=(7, 5)), rng.normal(size=5), rng.normal(size=(3, 5))
    w = verdict_direction(u, g, 2, 4)
    norm = torch.nn.RMSNorm(5, eps=0.0)
    norm.weight.data = torch.tensor(g)
    logits = norm(torch.tensor(h)) @ torch.tensor(u).T
    rms = np.sqrt((h ** 2).mean(1))
    np.testing.assert_allclose((logits[:, 2] - logits[:, 4]).detach().numpy(), h @ w / rms, rtol=1e-10)


def test_domain_aurocs_read_the_last_layer() -> None:
    x = np.zeros((4, 2, 3), dtype=np.float32)
    x[:, -1, 0] = [1.0, 2.0, -1.0, -2.0]  # the last layer separates the classes along axis 0
    x[:, 0, 0] = [-1.0, -2.0, 1.0, 2.0]  # the first layer (ignored) would invert them
    d = DomainData("toy", "empirical", x, np.array([1, 1, 0, 0]), ["a", "b", "c", "d"], np.zeros(4, bool))
    assert domain_aurocs([d], np.array([1.0, 0.0, 0.0])) == {"toy": 1.0}
    assert domain_aurocs([d], np.array([-1.0, 0.0, 0.0])) == {"toy": 0.0}
