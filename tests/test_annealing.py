"""KL annealing: only latent sites are down-weighted, and reports stay at weight 1."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import zoo
from zoo.annealing import LatentScale, warmup_weight


def _model():
    z = pyro.sample("z", dist.Normal(torch.tensor(0.0), 1.0))
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor([0.5, -1.0, 2.0]))


def test_latent_scale_touches_only_latent_sites():
    plain = poutine.trace(_model).get_trace()
    scaled = poutine.trace(poutine.replay(LatentScale(0.3)(_model), trace=plain)).get_trace()
    plain.compute_log_prob()
    scaled.compute_log_prob()
    assert scaled.nodes["z"]["log_prob_sum"] == pytest.approx(
        0.3 * plain.nodes["z"]["log_prob_sum"]
    )
    assert scaled.nodes["x"]["log_prob_sum"] == pytest.approx(plain.nodes["x"]["log_prob_sum"])


def test_warmup_weight():
    assert [warmup_weight(s, 4) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_weight(0, 0) == 1.0


def test_history_reports_the_weight_and_the_unweighted_elbo():
    result = zoo.fit(
        "gmm",
        elbo="trace",
        steps=20,
        kl_warmup=10,
        record_every=1,
        eval_particles=50,
        progress=False,
    )
    h = result.history
    np.testing.assert_allclose(h["kl_weight"], np.minimum(1.0, h["step"] / 10))
    # the exact-posterior guide keeps the weight-1 ELBO equal to log p(x) at every step,
    # whatever the training weight was
    np.testing.assert_allclose(h["elbo"], h["log_evidence"], atol=1e-8)
    assert result.diagnostics.gap == pytest.approx(0.0, abs=1e-8)


def test_warmup_is_refused_for_closed_form_and_negative():
    with pytest.raises(zoo.ZooError, match="SVI only"):
        zoo.fit("gmm", method="closed-form", kl_warmup=5, steps=2, eval_particles=50)
    with pytest.raises(zoo.ZooError, match="kl_warmup: -1 is not an integer >= 0"):
        zoo.fit("gmm", kl_warmup=-1, steps=2, eval_particles=50)
