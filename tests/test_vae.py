"""Variational autoencoders: probabilistic PCA in closed form against numpy, scipy and
scikit-learn, the linear VAE against its exact evidence, the importance-weighted bounds of the
nonlinear VAE, the collapse diagnostics, and the user's data files."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import multivariate_normal

import zoo
from zoo.diagnostics import evaluate
from zoo.errors import DataError
from zoo.gaussian import gaussian_kl, gaussian_log_density
from zoo.models.vae import (
    LinearGaussian,
    LinearVAE,
    Points,
    VariationalAutoencoder,
    diagonal_gap,
    ppca_covariance,
    ppca_ml,
    ppca_posterior,
    random_rotation,
    read_array_file,
)


def _prepare(model, guide_name: str):
    """A fresh param store with every parameter of the model and the guide created."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = model.build_guide(guide_name)
    with torch.no_grad():
        guide()
        model.model()
    return guide


# --------------------------------------------------------------------------------------------
# Probabilistic PCA in closed form
# --------------------------------------------------------------------------------------------
def test_gaussian_log_density_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov, mean, x = a @ a.T + np.eye(5), rng.normal(size=5), rng.normal(size=(7, 5))
    got = gaussian_log_density(torch.tensor(x), torch.tensor(mean), torch.tensor(cov))
    np.testing.assert_allclose(got.numpy(), multivariate_normal(mean, cov).logpdf(x), rtol=1e-12)


def test_ppca_closed_form_is_tipping_bishop_and_a_maximum():
    x = LinearVAE().x  # the digits training split, intensities / 16
    d = x.shape[1]
    q = 8
    ml = ppca_ml(x, q)
    xn = x.numpy()
    evals = np.linalg.eigvalsh(np.cov(xn, rowvar=False, bias=True))[::-1]
    # sigma^2 = mean of the D - q smallest eigenvalues of S (divisor N); W W^T = U (L - s2) U^T
    assert float(ml["noise_var"]) == pytest.approx(evals[q:].mean(), rel=1e-10)
    w = ml["weight"].numpy()
    np.testing.assert_allclose(
        np.linalg.eigvalsh(w @ w.T)[::-1][:q], evals[:q] - evals[q:].mean(), atol=1e-10
    )
    cov = ppca_covariance(ml["weight"], ml["noise_var"]).numpy()
    want = multivariate_normal(xn.mean(0), cov).logpdf(xn).sum()
    assert ml["log_likelihood"] == pytest.approx(want, rel=1e-10)
    # Tipping & Bishop eq. 4: L = -N/2 (D log 2 pi + log |C| + tr(C^-1 S)), tr(C^-1 S) = D at ML
    s = np.cov(xn, rowvar=False, bias=True)
    assert np.trace(np.linalg.solve(cov, s)) == pytest.approx(d, rel=1e-8)
    # a maximum: any perturbation of W, sigma^2 or mu lowers the likelihood
    rng = np.random.default_rng(1)
    for _ in range(5):
        dw = torch.tensor(rng.normal(scale=1e-2, size=w.shape))
        worse = gaussian_log_density(
            x, ml["mean"] + 1e-3, ppca_covariance(ml["weight"] + dw, ml["noise_var"] * 1.01)
        ).sum()
        assert float(worse) < ml["log_likelihood"]


def test_sklearn_pca_score_is_the_n_minus_1_covariance():
    """PCA.score is pPCA with the N-1 covariance: exactly c = N/(N-1) times C_ML, and below the
    closed-form maximum by (D/2)(log c + 1/c - 1) nats per point."""
    from sklearn.decomposition import PCA

    m = LinearVAE()
    x = m.x
    n, d = x.shape
    ml = ppca_ml(x, m.latent_dim)
    score = PCA(n_components=m.latent_dim, svd_solver="full").fit(x.numpy()).score(x.numpy())
    c = n / (n - 1)
    scaled = gaussian_log_density(
        x, ml["mean"], c * ppca_covariance(ml["weight"], ml["noise_var"])
    ).mean()
    assert score == pytest.approx(float(scaled), abs=1e-9)
    expected_drop = 0.5 * d * (math.log(c) + 1 / c - 1)
    assert ml["log_likelihood"] / n - score == pytest.approx(expected_drop, rel=1e-6)
    assert m.pca_score() == pytest.approx(score, abs=1e-12)


def test_linear_gaussian_likelihood_equals_the_normal():
    rng = np.random.default_rng(2)
    w, mu = torch.tensor(rng.normal(size=(6, 3))), torch.tensor(rng.normal(size=6))
    z = torch.tensor(rng.normal(size=(4, 5, 3)))  # 4 particles, 5 points
    x = torch.tensor(rng.normal(size=(5, 6)))
    scale = torch.tensor(0.7, dtype=torch.float64)
    got = LinearGaussian(z, w, mu, scale).log_prob(x)
    want = torch.distributions.Normal(z @ w.T + mu, scale).log_prob(x).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    expanded = LinearGaussian(z[:1], w, mu, scale).expand((4, 5))
    assert expanded.batch_shape == (4, 5) and expanded.event_shape == (6,)
    assert LinearGaussian(z, w, mu, scale).sample().shape == (4, 5, 6)


def test_posterior_and_diagonal_gap_formulas():
    """The exact posterior from Bayes' rule on the joint Gaussian, and the best diagonal gap
    against the KL of the best diagonal Gaussian (exact means, variances 1 / Lambda_ii)."""
    rng = np.random.default_rng(3)
    w, mu, s2 = torch.tensor(rng.normal(size=(5, 2))), torch.tensor(rng.normal(size=5)), 0.3
    a, b, cov = ppca_posterior(w, mu, s2)
    # joint of (z, x): Cov(z, x) = W^T, Cov(x) = C; p(z | x) mean W^T C^-1 (x - mu)
    c = ppca_covariance(w, s2)
    x = torch.tensor(rng.normal(size=(3, 5)))
    want_mean = (x - mu) @ torch.linalg.solve(c, w)
    torch.testing.assert_close(x @ a.T + b, want_mean)
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(cov, eye - w.T @ torch.linalg.solve(c, w))
    precision = torch.linalg.inv(cov)
    diag_cov = torch.diag(1.0 / precision.diagonal())
    kl = gaussian_kl(want_mean, diag_cov, want_mean, cov)
    assert float(kl[0]) == pytest.approx(diagonal_gap(w, s2), rel=1e-10)
    # orthogonal columns: the posterior is diagonal and the gap vanishes
    q_orth, _ = torch.linalg.qr(w)
    assert diagonal_gap(q_orth * torch.tensor([2.0, 0.5], dtype=torch.float64), s2) < 1e-12


# --------------------------------------------------------------------------------------------
# The linear VAE against its exact evidence
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["random", "ml"])
def test_exact_encoder_has_elbo_equal_to_log_evidence(init):
    """With the encoder set to the exact posterior map, every particle's log importance ratio
    is log p(x): the ELBO equals the evidence, with zero variance, at any decoder."""
    m = LinearVAE(init=init)
    guide = _prepare(m, "full-rank")
    m.set_encoder(guide)
    d = evaluate(m, guide, num_particles=50, guide_name="full-rank")
    assert d.elbo == pytest.approx(d.log_evidence, abs=1e-8 * abs(d.log_evidence))
    assert d.elbo_se < 1e-9 and d.khat == -math.inf
    assert d.best_elbo == pytest.approx(d.log_evidence)
    assert float(m.analytic_gap(guide).abs().max()) < 1e-10
    assert d.iwae == pytest.approx(d.log_evidence, abs=1e-6)


def test_diagonal_encoder_fails_to_be_exact_once_w_is_rotated():
    """Lucas et al. (2019): W_ML has orthogonal columns (its posterior is diagonal, the best
    diagonal encoder is exact); W_ML R has the same evidence but a correlated posterior, and the
    best diagonal encoder falls short by the analytic gap, measured within Monte Carlo error."""
    plain = LinearVAE(init="ml", train_decoder=False)
    rotated = LinearVAE(init="ml-rotated", train_decoder=False)
    assert plain.log_evidence() == pytest.approx(rotated.log_evidence(), rel=1e-12)
    assert diagonal_gap(*plain.current()[::2]) < 1e-10
    gap = diagonal_gap(*rotated.current()[::2])
    assert gap > 0.1  # nats per image
    guide = _prepare(rotated, "mean-field")
    rotated.set_encoder(guide)
    d = evaluate(rotated, guide, num_particles=400, guide_name="mean-field")
    n = d.num_data
    assert abs(d.gap / n - gap) < 4 * d.elbo_se / n
    assert d.family_gap / n == pytest.approx(0.0, abs=4 * d.elbo_se / n)
    assert float(rotated.analytic_gap(guide).mean()) == pytest.approx(gap, rel=1e-10)


def test_trained_linear_vae_reaches_the_evidence_and_the_closed_form_maximum():
    """SVI from a random decoder: the trained ELBO is within 0.01 nats per image of the exact
    log evidence at the trained parameters (issue), and that evidence within 0.005 nats per
    image of the closed-form maximum (measured ~0.0008 after 1000 steps and ~0.0006 after 2000:
    Adam's step size decays to 1e-4, the remaining shortfall is optimisation, not noise)."""
    result = zoo.fit(
        "linear-vae",
        steps=1000,
        eval_particles=200,
        test_particles=50,
        record_every=500,
        progress=False,
    )
    d, s = result.diagnostics, result.summary
    n = d.num_data
    assert -3 * d.elbo_se / n <= d.gap / n < 0.01
    assert 0 <= s["analytic_gap_per_point"] < 0.01
    assert 0 <= s["shortfall_from_closed_form_per_point"] < 0.005
    # the peer: scikit-learn's PCA.score, below the maximum by its N-1 convention only
    maximum = s["closed_form_max_log_likelihood_per_point"]
    peer = maximum - s["sklearn_expected_difference_per_point"]
    assert s["sklearn_pca_score_per_point"] == pytest.approx(peer, abs=1e-9)
    # the test split: the exact evidence is known there too, and bounds the ELBO
    t = s["test"]
    assert t["per_point"]["gap"] > -3 * t["per_point"]["elbo_se"]
    assert t["per_point"]["gap"] < 0.05


@pytest.mark.slow
def test_iaf_encoder_tightens_the_gap():
    """Kingma et al. (2016): with the default budget (6000 steps) four IAF layers on top of the
    Gaussian encoder shrink the test-set IWAE_1000 - ELBO (measured 1.11 -> 0.75 nats per image
    in development; standard errors ~0.01)."""
    gaps = {}
    for guide in ("mean-field", "iaf"):
        result = zoo.fit("vae", guide=guide, record_every=300, eval_particles=30, progress=False)
        gaps[guide] = result.summary["test"]["per_point"]["iwae_minus_elbo"]
    assert gaps["iaf"] < 0.9 * gaps["mean-field"]


@pytest.mark.slow
def test_training_the_diagonal_vae_rotates_w_back():
    """Lucas et al. (2019): from W_ML R the diagonal VAE's gap (0.4 nats per image) closes as
    training makes the columns of W orthogonal."""
    result = zoo.fit(
        "linear-vae",
        guide="mean-field",
        init="ml-rotated",
        eval_particles=200,
        test_particles=50,
        record_every=500,
        progress=False,
    )
    d, s = result.diagnostics, result.summary
    assert d.gap / d.num_data < 0.02
    assert s["w_offdiagonal_gram_norm"] < 0.1


# --------------------------------------------------------------------------------------------
# The nonlinear VAE
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_vae():
    torch.set_num_threads(1)
    return zoo.fit(
        "vae", steps=300, eval_particles=30, test_particles=30, record_every=100, progress=False
    )


def test_elbo_below_iwae_k_below_iwae_k_prime(short_vae):
    """ELBO <= IWAE_10 <= IWAE_100 <= IWAE_1000 on the test split (Burda et al. 2016, Thm 1),
    each difference beyond its Monte Carlo error (3 combined standard errors)."""
    short_vae.activate()
    model, guide = short_vae.model, short_vae.guide
    test = model.on_test_split()
    bound = guide.bind(test)
    pyro.set_rng_seed(5)
    ds = {k: evaluate(test, bound, num_particles=k, with_khat=False) for k in (10, 100, 1000)}
    elbo = ds[1000]
    values = [(elbo.elbo, elbo.elbo_se)] + [(ds[k].iwae, ds[k].iwae_se) for k in (10, 100, 1000)]
    for (lo, lo_se), (hi, hi_se) in itertools.pairwise(values):
        assert hi - lo > -3 * math.hypot(lo_se, hi_se)
    assert values[-1][0] - values[0][0] > 0  # the whole chain strictly tightens
    assert "per data point" in elbo.iwae_scope


def test_summary_reports_test_split_and_collapse(short_vae):
    s = short_vae.summary
    assert s["num_train"] + s["num_test"] == 1797
    t = s["test"]
    assert t["num_data"] == s["num_test"] and t["num_particles"] == 30
    assert t["iwae"] >= t["elbo"] - 3 * (t["iwae_se"] + t["elbo_se"])
    c = s["collapse"]
    assert len(c["kl_per_dim"]) == 8 and c["kl_method"] == "analytic"
    assert 0 <= c["active_units"] <= 8
    # the analytic per-dimension KLs add up to the analytic KL of the diagnostics
    d = short_vae.diagnostics
    assert sum(c["kl_per_dim"]) * d.num_data == pytest.approx(d.kl, rel=1e-4)


def test_test_split_uses_the_same_networks(short_vae):
    short_vae.activate()
    model, guide = short_vae.model, short_vae.guide
    test = model.on_test_split()
    assert test.num_data == len(model.x_test) and test.decoder is model.decoder
    bound = guide.bind(test)
    assert bound.encoder is guide.encoder
    q_train = guide.posterior(model.x_test[:5])
    pyro.set_rng_seed(0)
    with pyro.poutine.trace() as tr:
        bound()
    torch.testing.assert_close(tr.trace.nodes["z"]["fn"].mean[:5], q_train.mean)


def test_with_data_is_the_same_model_on_other_points(short_vae):
    """``with_data`` binds the same networks and parameters to other rows; the original model
    keeps its data, and the held-out report is the model's own evaluation on its test split."""
    short_vae.activate()
    model, guide = short_vae.model, short_vae.guide
    n = model.num_data
    few = model.with_data(Points(model.x_test[:7]))
    assert few.num_data == 7 and few.decoder is model.decoder and few.x is not model.x
    assert model.num_data == n and model.x.shape[0] == n
    torch.testing.assert_close(
        few.posterior_means(guide, few.x), model.posterior_means(guide, model.x_test[:7])
    )
    test = model.with_data(model.held_out)
    pyro.set_rng_seed(3)
    by_hand = evaluate(test, guide.bind(test), num_particles=30, with_khat=False)
    pyro.set_rng_seed(3)
    report = model.test_diagnostics(guide, 30)
    assert report["num_data"] == len(model.x_test)
    assert report["elbo"] == by_hand.elbo and report["iwae"] == by_hand.iwae


def test_figures(short_vae):
    import matplotlib.pyplot as plt

    figures = short_vae.figures()
    assert {"reconstructions", "prior_samples", "latent_map", "kl_per_dim", "training"} <= set(
        figures
    )
    for fig in figures.values():
        plt.close(fig)


def test_collapsed_units_are_found():
    """Point the encoder's last three dimensions at the prior (mean 0, sd 1 for every x): their
    KL is zero, their activity zero, and the active-unit count drops by three."""
    m = VariationalAutoencoder(latent_dim=5, hidden=32)
    guide = _prepare(m, "mean-field")
    store = pyro.get_param_store()
    weight = store["encoder$$$head.weight"].detach().clone()  # rows: 5 means, then 5 scales
    bias = store["encoder$$$head.bias"].detach().clone()
    for rows, value in ((slice(2, 5), 0.0), (slice(7, 10), math.log(math.expm1(1 - 1e-4)))):
        weight[rows] = 0.0
        bias[rows] = value
    store["encoder$$$head.weight"] = weight
    store["encoder$$$head.bias"] = bias
    c = m._collapse_summary(guide)
    assert max(abs(k) for k in c["kl_per_dim"][2:]) < 1e-6
    assert max(c["activity"][2:]) < 1e-12
    assert c["active_units"] <= 2


@pytest.mark.parametrize("guide", ["mean-field", "iaf"])
def test_same_seed_same_fit_and_resume(tmp_path, monkeypatch, guide):
    """The networks are built after the runner seeds torch: the same seed gives the same
    parameters, and a run resumed from its checkpoint ends where an uninterrupted one does."""
    from zoo import runner

    kw = dict(
        guide=guide,
        steps=20,
        eval_particles=30,
        test_particles=30,
        hidden=32,
        flows=2,
        record_every=10,
        checkpoint_every=10,
        progress=False,
    )
    whole = zoo.fit("vae", **kw)
    again = zoo.fit("vae", **kw)
    for k, v in whole.param_state["params"].items():
        torch.testing.assert_close(again.param_state["params"][k], v, rtol=0, atol=0)

    save = runner._Trainer._save_checkpoint

    def save_then_die(self, step, optim):
        save(self, step, optim)
        if step == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner._Trainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        zoo.fit("vae", run_dir=tmp_path, **kw)
    monkeypatch.undo()
    resumed = zoo.resume(tmp_path, progress=False)
    for k, v in whole.param_state["params"].items():
        torch.testing.assert_close(resumed.param_state["params"][k], v, rtol=0, atol=0)


def test_iaf_guide_and_gaussian_likelihood():
    result = zoo.fit(
        "vae",
        guide="iaf",
        likelihood="gaussian",
        steps=30,
        hidden=32,
        eval_particles=30,
        test_particles=30,
        record_every=10,
        progress=False,
    )
    d = result.diagnostics
    assert d.kl_method == "monte-carlo" and math.isfinite(d.iwae)
    assert result.summary["collapse"]["kl_method"] == "moment-matched"
    x = result.model.x
    assert float(x.min()) > 0.0 and float(x.max()) < 1.0  # dequantised intensities


def test_kl_warmup_history():
    result = zoo.fit(
        "vae",
        steps=20,
        kl_warmup=10,
        hidden=32,
        eval_particles=30,
        test_particles=30,
        record_every=5,
        progress=False,
    )
    h = result.history
    np.testing.assert_allclose(h["kl_weight"], np.minimum(1.0, h["step"] / 10))
    # the recorded ELBO is at weight 1: reconstruction minus the whole KL. The two sides differ
    # by Monte Carlo noise (<= 12 nats measured, KL ~ 1000-1500 nats here); an ELBO recorded at
    # the warm-up weight would be off by (1 - weight) KL, ~650 nats at step 5. 5% of the KL
    # sits between the two.
    gap = (h["elbo"] - (h["expected_log_likelihood"] - h["kl"])).abs()
    assert (gap < 0.05 * h["kl"]).all(), gap


# --------------------------------------------------------------------------------------------
# The user's data files
# --------------------------------------------------------------------------------------------
def test_read_array_files(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.random((30, 4, 4)) > 0.5).astype(np.float32)
    np.save(tmp_path / "a.npy", images)
    values, labels, shape = read_array_file(tmp_path / "a.npy")
    assert values.shape == (30, 16) and labels is None and shape == (4, 4)
    np.savez(tmp_path / "b.npz", x=images.reshape(30, 16), y=np.arange(30) % 3)
    values, labels, _ = read_array_file(tmp_path / "b.npz")
    assert values.shape == (30, 16) and list(labels[:4]) == [0, 1, 2, 0]
    header = "label," + ",".join(f"p{i}" for i in range(16))
    rows = [f"{i % 3}," + ",".join(str(v) for v in r) for i, r in enumerate(values)]
    (tmp_path / "c.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    got, labels, _ = read_array_file(tmp_path / "c.csv")
    np.testing.assert_allclose(got, values)
    assert list(labels[:4]) == [0, 1, 2, 0]
    result = zoo.fit(
        "vae",
        data=str(tmp_path / "b.npz"),
        steps=5,
        hidden=16,
        latent_dim=2,
        eval_particles=30,
        test_particles=30,
        progress=False,
    )
    assert result.model.image_shape == (4, 4) and result.summary["num_test"] == 6
    lin = LinearVAE(str(tmp_path / "c.csv"), latent_dim=2)
    assert lin.num_data == 24


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("v.npy", lambda p: np.save(p, np.zeros(10)), "expected \\(N, D\\)"),
        ("v.npy", lambda p: np.save(p, np.zeros((3, 2, 2, 2))), "expected \\(N, D\\)"),
        ("n.npy", lambda p: np.save(p, np.array([[0.0, np.nan]] * 10)), "NaN or infinite"),
        ("s.npy", lambda p: np.save(p, np.array([["a", "b"]] * 10)), "not numeric"),
        ("o.npy", lambda p: np.save(p, np.array([[1, None]] * 10, dtype=object)), "cannot read"),
        ("m.npz", lambda p: np.savez(p, a=np.zeros((10, 2)), b=np.zeros((10, 2))), "name the"),
        ("t.csv", lambda p: p.write_text("a,b\n1,x\n2,3\n4,5\n6,7\n"), "non-numeric value"),
        ("f.txt", lambda p: p.write_text("1 2\n"), "unsupported file type"),
        ("g.npy", lambda p: p.write_text("not an array"), "cannot read"),
        ("r.npy", lambda p: np.save(p, np.full((20, 4), 3.0)), "values in \\[0, 1\\]"),
    ],
)
def test_bad_data_files_are_one_line_errors(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError, match=message) as info:
        VariationalAutoencoder(str(path))
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        VariationalAutoencoder(str(tmp_path / "nope.npy"))
    with pytest.raises(zoo.ZooError, match="--test-fraction"):
        VariationalAutoencoder(test_fraction=1.5)
    with pytest.raises(zoo.ZooError, match="--latent-dim"):
        LinearVAE(latent_dim=64)
    with pytest.raises(zoo.ZooError, match="--train-decoder"):
        LinearVAE(train_decoder="maybe")


def test_random_rotation_is_a_rotation():
    r = random_rotation(5, 3).numpy()
    np.testing.assert_allclose(r @ r.T, np.eye(5), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
