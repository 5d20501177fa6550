"""Variational autoencoders: a nonlinear VAE, and the linear VAE whose evidence is exact.

Follows Kingma & Welling (2014), "Auto-encoding variational Bayes", ICLR; Rezende, Mohamed &
Wierstra (2014), ICML; Burda, Grosse & Salakhutdinov (2016), "Importance weighted
autoencoders", ICLR; Tipping & Bishop (1999), "Probabilistic principal component analysis",
JRSS B 61, 611-622; Lucas, Tucker, Grosse & Norouzi (2019), "Don't blame the ELBO! A linear VAE
perspective on posterior collapse", NeurIPS.

Every data point x_n has a latent z_n in R^q with prior N(0, I) and a decoder p_theta(x | z).
The guide is amortized: an encoder network q_phi(z | x) (:mod:`guides.amortized`), sampled
with the reparameterization trick, reading its mini-batch through the model's data plate. The
ELBO per point is reconstruction minus KL, E_q log p(x | z) - KL(q(z | x) || N(0, I)).

``vae`` — MLP encoder and decoder.
  Evidence is not exact. The report gives the ELBO and the importance-weighted bound IWAE_K
  (K = ``--eval-particles``, per data point: every latent lives in the data plate) on the
  training split, and the same on the held-out test split in the summary (K =
  ``--test-particles``), with standard errors; ELBO <= IWAE_K <= IWAE_K' <= log p(x) for K < K'.
  Likelihoods: ``bernoulli`` on binarised pixels (intensity/16 > 0.5), or ``gaussian`` on
  uniformly dequantised intensities (pixel + u) / 17, u ~ U(0, 1) (Theis, van den Oord &
  Bethge 2016), with one learned standard deviation per pixel (at least 1e-3): a density on
  [0, 1]^64 that is bounded because of the dequantisation. Guides: ``gaussian``
  q(z | x) = N(m(x), diag V(x)), trained with the analytic KL (``meanfield``, Kingma & Welling's
  estimator B), or ``iaf``, inverse autoregressive flow layers on top (Kingma et al. 2016).

``linear-vae`` — probabilistic PCA as a VAE.
  Decoder x = W z + mu + eps, eps ~ N(0, sigma^2 I). Everything is Gaussian and known:

  - evidence p(x) = N(x | mu, C), C = W W^T + sigma^2 I (Tipping & Bishop eq. 3);
  - posterior p(z | x) = N(M^{-1} W^T (x - mu), sigma^2 M^{-1}), M = W^T W + sigma^2 I
    (eq. 6): a linear mean and an x-independent covariance, so the encoder family
    ``full-covariance`` (m(x) = A x + b, one Cholesky factor) contains it and its best ELBO
    is the evidence;
  - the best ``diagonal`` encoder has the exact means and variances 1 / Lambda_ii, with
    Lambda = M / sigma^2 the posterior precision; its ELBO is below the evidence by
    0.5 (sum_i log Lambda_ii - log |Lambda|) per point, zero only when W^T W is diagonal.
    Rotating W -> W R leaves the evidence unchanged but not this gap; Lucas et al. (2019) show
    that training the diagonal VAE rotates W back to orthogonal columns, where it is exact;
  - the maximum-likelihood solution in closed form (eqs. 7-8): with S the sample covariance
    (divisor N) and eigenvalues lambda_1 >= ... >= lambda_D, sigma^2_ML is the mean of the
    D - q smallest, W_ML = U_q (Lambda_q - sigma^2 I)^{1/2} R, mu_ML the sample mean.
    scikit-learn's ``PCA.score`` is the same model with the N - 1 covariance: its covariance
    is exactly N / (N - 1) times C_ML, so its mean log-likelihood is lower by
    (D / 2)(log c + 1 / c - 1) per point, c = N / (N - 1).

Data: scikit-learn's bundled digits (1,797 8x8 images, intensities 0-16), split into a
training and a test set once, stratified by digit, with a fixed seed (``--split-seed``,
``--test-fraction``). ``--data FILE`` reads the user's own ``.npy``/``.npz``/``.csv`` array
(rows are data points; an (N, H, W) array is flattened), split the same way. The nonlinear
VAE computes in float32 (speed), the linear VAE in float64 (exactness).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from guides.amortized import (
    AmortizedGuide,
    GaussianEncoder,
    IAFEncoder,
    LinearGaussianEncoder,
    MLPDecoder,
)
from zoo.collapse import CollapseReport, collapse_report
from zoo.data import (
    FLOAT32_LIMIT,
    FLOAT64_LIMIT,
    check_dtype,
    check_magnitude,
    npz_keys,
    read_npy,
    read_npz_member,
    read_numeric_table,
)
from zoo.diagnostics import evaluate
from zoo.errors import DataError
from zoo.model import Option, Training, ZooModel, boolean, positive_int, seed_value
from zoo.registry import register

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from zoo.run_view import RunView

#: the smallest standard deviation of a pixel under the Gaussian likelihood
MIN_PIXEL_SCALE = 1e-3
_LABEL_COLUMNS = ("label", "labels", "y", "target", "digit")
_ARRAY_KEYS = ("x", "X", "images", "data")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: intensities 0-16, shape (1797, 64), and the labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def _check_array(
    values: np.ndarray, source: str, max_abs: float = FLOAT64_LIMIT
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A numeric, finite (N, D) float64 array (an (N, H, W) one flattened) and its image shape.

    Booleans are accepted (binary images); complex, object, text and structured arrays are
    not, nor NaN or infinite values, nor magnitudes above ``max_abs`` (the model's arithmetic
    would overflow)."""
    values = np.asarray(values)
    check_dtype(values.dtype, source, allow_bool=True)
    if values.ndim not in (2, 3):
        raise DataError(
            f"{source} has shape {values.shape}; expected (N, D) data points or (N, H, W) images"
        )
    image_shape = tuple(values.shape[1:]) if values.ndim == 3 else None
    flat = values.reshape(values.shape[0], math.prod(values.shape[1:])).astype(np.float64)
    if flat.shape[0] < 4 or flat.shape[1] < 1:
        raise DataError(
            f"{source} has shape {values.shape}; at least 4 rows and 1 column are needed"
        )
    bad = int((~np.isfinite(flat)).any(axis=1).sum())
    if bad:
        raise DataError(f"{source} has {bad} row(s) with NaN or infinite values")
    check_magnitude(flat, source, max_abs=max_abs)
    return flat, image_shape  # type: ignore[return-value]


def _usable_labels(labels: np.ndarray) -> np.ndarray | None:
    """Labels as int64 for colouring, or None when they are not finite whole numbers (text,
    fractions, NaN, complex): the data are kept, the colouring dropped."""
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind != "f":
        return None
    finite = np.isfinite(labels).all() and np.abs(labels).max(initial=0.0) < 2.0**53
    if not finite or (labels != np.round(labels)).any():
        return None
    return labels.astype(np.int64)


def read_array_file(
    path: str | Path, max_abs: float = FLOAT64_LIMIT
) -> tuple[np.ndarray, np.ndarray | None, tuple | None]:
    """The user's data: (values (N, D) float64, labels or None, image shape or None).

    ``.npy``: one (N, D) or (N, H, W) array. ``.npz``: the array named x, X, images or data
    (or the only array), with labels from y, labels or target if present. ``.csv``: the
    numeric columns, a column named label/labels/y/target/digit taken as labels. A truncated
    or corrupt file, an array that is not real numbers (complex, object, text), too few rows
    or values above ``max_abs`` in magnitude: each is a one-line :class:`DataError`.
    """
    path = Path(path)
    source = repr(str(path))
    if not path.is_file():
        raise DataError(f"data file {source} does not exist")
    suffix = path.suffix.lower()
    labels = None
    if suffix == ".csv":
        values, names = read_numeric_table(path, min_rows=4, allow_constant=True, max_abs=max_abs)
        lower = [n.strip().lower() for n in names]
        label_cols = [i for i, n in enumerate(lower) if n in _LABEL_COLUMNS]
        if label_cols:
            labels = _usable_labels(values[:, label_cols[0]])
            values = np.delete(values, label_cols[0], axis=1)
            if values.shape[1] == 0:
                raise DataError(f"{source} has no numeric column besides the labels")
        values, shape = _check_array(values, source, max_abs)
        return values, labels, shape
    if suffix not in (".npy", ".npz"):
        raise DataError(f"cannot read {source}: unsupported file type; use .npy, .npz or .csv")
    if suffix == ".npz":
        keys = npz_keys(path)
        chosen = next((k for k in _ARRAY_KEYS if k in keys), None)
        if chosen is None and len(keys) == 1:
            chosen = keys[0]
        if chosen is None:
            raise DataError(f"{source} holds arrays {keys}; name the data x (and the labels y)")
        array = read_npz_member(path, chosen)
        source = f"{source} [{chosen}]"
        label_key = next((k for k in ("y", "labels", "target") if k in keys), None)
        if label_key is not None:
            labels = read_npz_member(path, label_key, allow_text=True).reshape(-1)
    else:
        array = read_npy(path)
    values, shape = _check_array(array, source, max_abs)
    if labels is not None:
        if labels.shape[0] != values.shape[0]:
            raise DataError(f"{source}: {labels.shape[0]} labels for {values.shape[0]} data points")
        labels = _usable_labels(labels)
    return values, labels, shape


def split_indices(
    num: int, labels: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split of ``num`` rows, stratified by label where that is possible."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(num)
    stratify = None
    if labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        n_test = math.ceil(test_fraction * num)
        if counts.min() >= 2 and n_test >= len(counts) and num - n_test >= len(counts):
            stratify = labels
    train, test = train_test_split(
        idx, test_size=test_fraction, random_state=seed, shuffle=True, stratify=stratify
    )
    return np.sort(train), np.sort(test)


def _fraction(value: Any) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{value!r} is not strictly between 0 and 1")
    return value


# --------------------------------------------------------------------------------------------
# Closed forms of probabilistic PCA (float64 in, float64 out)
# --------------------------------------------------------------------------------------------
def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(x_n | mean, cov) for each row of x, through the Cholesky factor of cov."""
    chol = torch.linalg.cholesky(cov)
    diff = (x - mean).unsqueeze(-1)
    alpha = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
    log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    d = x.shape[-1]
    return -0.5 * (d * math.log(2 * math.pi) + log_det + alpha.pow(2).sum(-1))


def ppca_covariance(weight: torch.Tensor, noise_var: torch.Tensor | float) -> torch.Tensor:
    """C = W W^T + sigma^2 I, the marginal covariance of x (Tipping & Bishop eq. 3)."""
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return weight @ weight.T + noise_var * eye


def ppca_posterior(
    weight: torch.Tensor, mean: torch.Tensor, noise_var: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact posterior p(z | x) = N(A x + b, Sigma): (A, b, Sigma) with A = M^{-1} W^T,
    b = -A mu, Sigma = sigma^2 M^{-1}, M = W^T W + sigma^2 I (Tipping & Bishop eq. 6)."""
    q = weight.shape[1]
    eye = torch.eye(q, dtype=weight.dtype, device=weight.device)
    m = weight.T @ weight + noise_var * eye
    a = torch.linalg.solve(m, weight.T)
    cov = noise_var * torch.linalg.inv(m)
    return a, -(a @ mean), 0.5 * (cov + cov.T)


def diagonal_gap(weight: torch.Tensor, noise_var: torch.Tensor | float) -> float:
    """log p(x) - best diagonal-Gaussian ELBO, per data point: 0.5 (sum log Lambda_ii -
    log |Lambda|), Lambda = (W^T W + sigma^2 I) / sigma^2 the posterior precision (the same for
    every x). Zero exactly when W^T W is diagonal."""
    q = weight.shape[1]
    eye = torch.eye(q, dtype=weight.dtype, device=weight.device)
    precision = (weight.T @ weight + noise_var * eye) / noise_var
    return float(0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)))


def gaussian_kl(
    loc_q: torch.Tensor, cov_q: torch.Tensor, loc_p: torch.Tensor, cov_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(loc_q, cov_q) || N(loc_p, cov_p)) for rows of locations and shared covariances."""
    q = cov_q.shape[-1]
    chol_p = torch.linalg.cholesky(cov_p)
    solve = torch.cholesky_solve(cov_q, chol_p)
    diff = (loc_p - loc_q).unsqueeze(-1)
    maha = torch.cholesky_solve(diff, chol_p).squeeze(-1).mul(diff.squeeze(-1)).sum(-1)
    logdet_p = 2.0 * chol_p.diagonal().log().sum()
    return 0.5 * (solve.diagonal().sum() + maha - q + logdet_p - torch.logdet(cov_q))


def ppca_ml(x: torch.Tensor, latent_dim: int) -> dict[str, Any]:
    """The maximum-likelihood probabilistic PCA (Tipping & Bishop 1999, eqs. 7-8).

    Returns ``mean`` (the sample mean), ``weight`` W_ML = U_q (Lambda_q - sigma^2 I)^{1/2}
    (the rotation R = I), ``noise_var`` sigma^2_ML (the mean of the D - q smallest eigenvalues
    of the covariance S with divisor N), ``eigenvalues`` of S (descending) and
    ``log_likelihood``, the maximised total log N(x_n | mu, C).
    """
    n, d = x.shape
    if not 1 <= latent_dim < d:
        raise ValueError(f"latent_dim must be in 1..{d - 1}, got {latent_dim}")
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / n
    evals, evecs = torch.linalg.eigh(cov)
    evals, evecs = evals.flip(0), evecs.flip(1)
    noise_var = evals[latent_dim:].mean()
    scales = (evals[:latent_dim] - noise_var).clamp_min(0.0).sqrt()
    weight = evecs[:, :latent_dim] * scales
    loglik = gaussian_log_density(x, mean, ppca_covariance(weight, noise_var)).sum()
    return {
        "mean": mean,
        "weight": weight,
        "noise_var": noise_var,
        "eigenvalues": evals,
        "log_likelihood": float(loglik),
    }


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    """A seeded random rotation (Haar-distributed orthogonal matrix with determinant +1)."""
    rng = np.random.default_rng(seed)
    qmat, rmat = np.linalg.qr(rng.standard_normal((dim, dim)))
    qmat = qmat * np.sign(np.diag(rmat))
    if np.linalg.det(qmat) < 0:
        qmat[:, 0] = -qmat[:, 0]
    return torch.as_tensor(qmat, dtype=torch.float64)


class LinearGaussian(dist.TorchDistribution):
    """N(x | W z + mu, sigma^2 I) as a distribution over x, evaluated in the latent space.

    ``log_prob`` expands ||r - W z||^2 = ||r||^2 - 2 (W^T r) . z + z^T (W^T W) z with
    r = x - mu, so that K particles for N points cost O(K N q) memory instead of O(K N D):
    the same numbers as ``Normal(z @ W.T + mu, sigma).to_event(1)`` (tested), affordable for
    the thousand-particle importance-weighted bound.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        z: torch.Tensor,
        weight: torch.Tensor,
        mean: torch.Tensor,
        scale: torch.Tensor,
        validate_args: bool | None = False,
    ) -> None:
        self.z, self.weight, self.loc_offset, self.scale = z, weight, mean, scale
        super().__init__(z.shape[:-1], mean.shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.z @ self.weight.T + self.loc_offset

    @property
    def variance(self) -> torch.Tensor:
        return (self.scale**2).expand(self.batch_shape + self.event_shape)

    def expand(self, batch_shape, _instance=None) -> LinearGaussian:
        batch_shape = torch.Size(batch_shape)
        z = self.z.expand(batch_shape + self.z.shape[-1:])
        return LinearGaussian(z, self.weight, self.loc_offset, self.scale)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        eps = torch.randn(shape, dtype=self.z.dtype, device=self.z.device)
        return self.mean.expand(shape) + self.scale * eps

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r = value - self.loc_offset  # (..., D)
        wr = r @ self.weight  # (..., q)
        gram = self.weight.T @ self.weight
        z = self.z
        sq = r.pow(2).sum(-1) - 2.0 * (wr * z).sum(-1) + ((z @ gram) * z).sum(-1)
        d = value.shape[-1]
        var = self.scale**2
        return -0.5 * sq / var - 0.5 * d * torch.log(2 * math.pi * var)


# --------------------------------------------------------------------------------------------
# What both VAEs share
# --------------------------------------------------------------------------------------------
class _AmortizedModel(ZooModel):
    """Data, split, data plate and the reporting of an amortized model with one latent z_n
    per data point. Subclasses provide ``model``, ``build_networks`` and ``decode_mean``."""

    data_plate = "data"
    max_plate_nesting = 1
    #: (particle, data point) pairs per chunk of the diagnostics: a pair costs a decoder pass
    #: (hidden activations of 256 floats), not a few numbers as in the default budget
    eval_chunk_budget = 250_000
    dtype: torch.dtype = torch.float32
    data_help = (
        ".npy/.npz/.csv array file, one data point per row ((N, H, W) images are flattened); "
        "a CSV column named label is used to colour the latent map"
    )

    x: torch.Tensor
    x_test: torch.Tensor
    labels: np.ndarray | None
    labels_test: np.ndarray | None

    # -- data -----------------------------------------------------------------------------------
    def _load(self, data: Any, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw values of every data point and their labels (None without)."""
        if data is None:
            values, labels = load_digits_data()
            self.image_shape: tuple[int, int] = (8, 8)
            self.source = "digits"
            return values, labels
        max_abs = FLOAT32_LIMIT if self.dtype == torch.float32 else FLOAT64_LIMIT
        if isinstance(data, str | Path):
            values, labels, shape = read_array_file(data, max_abs)
            self.source = str(data)
        else:
            values, shape = _check_array(np.asarray(data), "the data array", max_abs)
            labels, self.source = None, "array"
        d = values.shape[1]
        side = math.isqrt(d)
        self.image_shape = shape if shape is not None else (side, side) if side**2 == d else (1, d)
        return values, labels

    def _split(self, values: np.ndarray, labels: np.ndarray | None, opts: dict[str, Any]):
        train, test = split_indices(len(values), labels, opts["test_fraction"], opts["split_seed"])
        if len(train) < 2 or len(test) < 2:
            raise DataError(
                f"{len(values)} data points leave {len(train)} for training and {len(test)} "
                "for testing; at least 2 each are needed"
            )
        self.train_index, self.test_index = train, test
        self.labels = None if labels is None else labels[train]
        self.labels_test = None if labels is None else labels[test]
        return values[train], values[test]

    def _set_data(self, train: np.ndarray, test: np.ndarray) -> None:
        self.x = self.tensor(train, self.dtype)
        self.x_test = self.tensor(test, self.dtype)
        self.num_data, self.data_dim = self.x.shape

    # -- the data plate, and the encoder's view of the data ---------------------------------------
    def plate(self, subsample_size: int | None = None) -> pyro.plate:
        return pyro.plate(self.data_plate, self.num_data, subsample_size=subsample_size, dim=-1)

    def create_plates(self, subsample_size: int | None = None) -> pyro.plate:
        return self.plate(subsample_size)

    def encoder_input(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.x if idx is None else self.x[idx]

    def observed(self, idx: torch.Tensor | None) -> torch.Tensor:
        return self.x if idx is None else self.x[idx]

    def on_test_split(self) -> _AmortizedModel:
        """The same model (the same networks and parameters) on the test split."""
        other = copy.copy(self)
        other.x, other.x_test = self.x_test, self.x
        other.labels, other.labels_test = self.labels_test, self.labels
        other.num_data = self.x_test.shape[0]
        return other

    # -- the networks -----------------------------------------------------------------------------
    def build_networks(self) -> None:
        raise NotImplementedError

    def ensure_networks(self) -> None:
        if getattr(self, "decoder", None) is None:
            self.build_networks()

    def prior(self) -> dist.TorchDistribution:
        zeros = torch.zeros(self.latent_dim, dtype=self.dtype, device=self.device)
        return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] at the param store's current values (for pictures)."""
        raise NotImplementedError

    # -- reporting --------------------------------------------------------------------------------
    @torch.no_grad()
    def posterior_means(self, guide: AmortizedGuide, x: torch.Tensor) -> torch.Tensor:
        q = guide.posterior(x)
        if isinstance(q, torch.distributions.Independent | torch.distributions.MultivariateNormal):
            return q.mean
        return q.sample((256,)).mean(0)

    @torch.no_grad()
    def collapse(self, guide: AmortizedGuide, x: torch.Tensor) -> CollapseReport:
        return collapse_report(guide.posterior(x))

    @torch.no_grad()
    def test_diagnostics(self, guide: AmortizedGuide, num_particles: int) -> dict[str, Any]:
        """ELBO, IWAE (per point, K = ``num_particles``) and their standard errors on the test
        split, with the same trained networks."""
        test = self.on_test_split()
        d = evaluate(test, guide.bind(test), num_particles=num_particles, with_khat=False)
        n = d.num_data
        out = {
            "num_data": n,
            "num_particles": d.num_particles,
            "elbo": d.elbo,
            "elbo_se": d.elbo_se,
            "iwae": d.iwae,
            "iwae_se": d.iwae_se,
            "iwae_minus_elbo": d.iwae - d.elbo,
            "expected_log_likelihood": d.expected_log_likelihood,
            "kl": d.kl,
            "log_evidence": d.log_evidence,
            "per_point": {
                "elbo": d.elbo / n,
                "elbo_se": d.elbo_se / n,
                "iwae": d.iwae / n,
                "iwae_se": d.iwae_se / n,
                "iwae_minus_elbo": (d.iwae - d.elbo) / n,
                "expected_log_likelihood": d.expected_log_likelihood / n,
                "kl": d.kl / n,
            },
        }
        if d.log_evidence is not None:
            out["per_point"]["log_evidence"] = d.log_evidence / n
            out["gap"] = d.log_evidence - d.elbo
            out["per_point"]["gap"] = out["gap"] / n
        return out

    def _collapse_summary(self, guide: AmortizedGuide) -> dict[str, Any]:
        train = self.collapse(guide, self.x)
        test = self.collapse(guide, self.x_test)
        return {
            "kl_per_dim": train.kl_per_dim,
            "kl_method": train.kl_method,
            "activity": train.activity,
            "active_units": train.active_units,
            "active_units_test": test.active_units,
            "activity_threshold": train.threshold,
            "latent_dim": train.latent_dim,
        }

    def plots(self, run: RunView) -> dict[str, Figure]:
        guide: AmortizedGuide = run.guide
        guide.sync()
        self.ensure_networks()
        figures = {
            "reconstructions": plot_reconstructions(self, guide),
            "prior_samples": plot_prior_samples(self),
            "latent_map": plot_latent_map(self, guide),
            "kl_per_dim": plot_kl_per_dim(self.collapse(guide, self.x), self.title),
        }
        if "kl_weight" in run.history:
            figures["training"] = plot_training(run.history, self.title)
        return figures


# --------------------------------------------------------------------------------------------
# The nonlinear VAE
# --------------------------------------------------------------------------------------------
@register
class VariationalAutoencoder(_AmortizedModel):
    name = "vae"
    title = "Variational autoencoder"
    application = "variational autoencoders"
    reference = (
        "Kingma & Welling (2014); Rezende et al. (2014); Burda et al. (2016); Kingma et al. (2016)"
    )
    options = (
        Option("latent_dim", positive_int, 8, "size q of the latent z"),
        Option("hidden", positive_int, 256, "width of the encoder's and decoder's hidden layers"),
        Option("depth", positive_int, 1, "hidden layers in the encoder and in the decoder"),
        Option(
            "likelihood",
            str,
            "bernoulli",
            "bernoulli (binarised pixels) or gaussian (dequantised intensities, learned sd)",
            choices=("bernoulli", "gaussian"),
        ),
        Option("flows", positive_int, 4, "IAF layers of the iaf guide"),
        Option("test_fraction", _fraction, 0.2, "fraction of the data held out as the test set"),
        Option(
            "split_seed", seed_value, 0, "seed of the train/test split (and the dequantisation)"
        ),
        Option("test_particles", positive_int, 1000, "K of the test-set IWAE in the summary"),
    )
    guides = ("gaussian", "iaf")
    default_guide = "gaussian"
    default_elbo = "trace"
    elbo_for_guide = {"gaussian": "meanfield"}
    training = Training(
        steps=6000, lr=2e-3, quick_steps=600, lr_final_factor=0.1, particles=1, batch_size=128
    )
    # a history record scores 16 particles of every training image: keep them few
    leaderboard = ({"record_every": 30}, {"guide": "iaf", "record_every": 30})
    dtype = torch.float32

    def setup(self, data: Any, **opts: Any) -> None:
        values, labels = self._load(data, opts)
        train, test = self._split(values, labels, opts)
        self.likelihood_name = opts["likelihood"]
        if self.likelihood_name == "bernoulli":
            if self.source == "digits":
                train, test = (train / 16.0 > 0.5) * 1.0, (test / 16.0 > 0.5) * 1.0
            else:
                lo, hi = min(train.min(), test.min()), max(train.max(), test.max())
                if lo < 0.0 or hi > 1.0:
                    raise DataError(
                        f"the bernoulli likelihood needs values in [0, 1] (binarised at 0.5); "
                        f"the data range from {lo:g} to {hi:g}"
                    )
                train, test = (train > 0.5) * 1.0, (test > 0.5) * 1.0
        elif self.source == "digits":  # uniform dequantisation of the 17 intensity levels
            rng = np.random.default_rng(opts["split_seed"])
            train = (train + rng.uniform(size=train.shape)) / 17.0
            test = (test + rng.uniform(size=test.shape)) / 17.0
        self._set_data(train, test)
        self.latent_dim = opts["latent_dim"]
        self.hidden = [opts["hidden"]] * opts["depth"]
        self.num_flows = opts["flows"]
        self.test_particles = opts["test_particles"]
        self.encoder = self.decoder = None

    # -- networks, model, guides -----------------------------------------------------------------
    def build_networks(self) -> None:
        """Fresh encoder and decoder (from torch's RNG: the runner seeds it first)."""
        head = "logits" if self.likelihood_name == "bernoulli" else "loc"
        self.encoder = GaussianEncoder(
            self.data_dim, self.latent_dim, self.hidden, dtype=self.dtype
        ).to(self.device)
        self.decoder = MLPDecoder(
            self.latent_dim, {head: self.data_dim}, self.hidden, dtype=self.dtype
        ).to(self.device)

    def pixel_scale(self) -> torch.Tensor:
        init = torch.full((self.data_dim,), 0.2, dtype=self.dtype, device=self.device)
        positive = constraints.greater_than(MIN_PIXEL_SCALE)
        return pyro.param("pixel_scale", lambda: init.clone(), constraint=positive)

    def likelihood(self, out: dict[str, torch.Tensor], scale: torch.Tensor | None):
        if self.likelihood_name == "bernoulli":
            return dist.Bernoulli(logits=out["logits"], validate_args=False).to_event(1)
        return dist.Normal(out["loc"], scale, validate_args=False).to_event(1)

    def model(self, subsample_size: int | None = None) -> None:
        self.ensure_networks()
        decoder = pyro.module("decoder", self.decoder, update_module_params=True)
        scale = self.pixel_scale() if self.likelihood_name == "gaussian" else None
        with self.plate(subsample_size) as idx:
            z = pyro.sample("z", self.prior())
            x = self.observed(None if subsample_size is None else idx)
            pyro.sample("x", self.likelihood(decoder(z), scale), obs=x)

    def build_guide(self, name: str) -> AmortizedGuide:
        if name not in self.guides:
            return super().build_guide(name)  # raises the usual error
        self.build_networks()
        encoder = self.encoder
        if name == "iaf":
            encoder = IAFEncoder(self.encoder, num_flows=self.num_flows).to(self.device)
        return AmortizedGuide(self, encoder)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        decoder = pyro.module("decoder", self.decoder, update_module_params=True)
        out = decoder(z.to(self.dtype))
        if self.likelihood_name == "bernoulli":
            return torch.sigmoid(out["logits"])
        return out["loc"]

    # -- reporting ---------------------------------------------------------------------------------
    def summary(self, guide: AmortizedGuide, guide_name: str) -> dict[str, Any]:
        return {
            "likelihood": self.likelihood_name,
            "num_train": self.num_data,
            "num_test": int(self.x_test.shape[0]),
            "test": self.test_diagnostics(guide, self.test_particles),
            "collapse": self._collapse_summary(guide),
        }


# --------------------------------------------------------------------------------------------
# The linear VAE (probabilistic PCA)
# --------------------------------------------------------------------------------------------
@register
class LinearVAE(_AmortizedModel):
    name = "linear-vae"
    title = "Linear VAE (probabilistic PCA)"
    application = "variational autoencoders"
    reference = "Tipping & Bishop (1999); Kingma & Welling (2014); Lucas et al. (2019)"
    options = (
        Option("latent_dim", positive_int, 8, "size q of the latent z"),
        Option(
            "init",
            str,
            "random",
            "decoder start: random, ml (closed-form maximum likelihood), ml-rotated (W_ML R)",
            choices=("random", "ml", "ml-rotated"),
        ),
        Option("train_decoder", boolean, True, "train W, mu, sigma (false: encoder only)"),
        Option("rotation_seed", seed_value, 0, "seed of the rotation R of --init ml-rotated"),
        Option("test_fraction", _fraction, 0.2, "fraction of the data held out as the test set"),
        Option("split_seed", seed_value, 0, "seed of the train/test split"),
        Option("test_particles", positive_int, 1000, "K of the test-set IWAE in the summary"),
    )
    guides = ("full-covariance", "diagonal")
    default_guide = "full-covariance"
    default_elbo = "trace"
    training = Training(steps=2000, lr=0.1, quick_steps=1000, lr_final_factor=0.001)
    leaderboard = ({"record_every": 20}, {"guide": "diagonal", "record_every": 20})
    dtype = torch.float64

    def setup(self, data: Any, **opts: Any) -> None:
        values, labels = self._load(data, opts)
        if self.source == "digits":
            values = values / 16.0
        train, test = self._split(values, labels, opts)
        self._set_data(train, test)
        q = opts["latent_dim"]
        if q >= self.data_dim:
            raise DataError(f"--latent-dim {q} must be below the data dimension {self.data_dim}")
        if self.num_data <= self.data_dim:
            raise DataError(
                f"{self.num_data} training points in {self.data_dim} dimensions: probabilistic "
                "PCA needs more points than dimensions"
            )
        self.latent_dim = q
        self.ml = ppca_ml(self.x, q)
        self.init_name = opts["init"]
        self.train_decoder = opts["train_decoder"]
        self.rotation = random_rotation(q, opts["rotation_seed"]).to(self.device)
        self.test_particles = opts["test_particles"]
        self.encoder = None
        self.decoder = None  # the decoder is (W, mu, sigma), not a network
        self._fixed = None if self.train_decoder else self._initial_decoder()

    # -- the decoder's parameters ---------------------------------------------------------------
    def _initial_decoder(self) -> dict[str, torch.Tensor]:
        """Initial (W, mu, sigma); random draws come from torch's RNG (seeded by the runner)."""
        if self.init_name == "random":
            weight = 0.1 * torch.randn(self.data_dim, self.latent_dim, dtype=self.dtype)
            mean = torch.zeros(self.data_dim, dtype=self.dtype)
            scale = torch.ones((), dtype=self.dtype)
            return {
                "W": weight.to(self.device),
                "mu": mean.to(self.device),
                "noise_scale": scale.to(self.device),
            }
        weight = self.ml["weight"]
        if self.init_name == "ml-rotated":
            weight = weight @ self.rotation
        return {
            "W": weight.clone(),
            "mu": self.ml["mean"].clone(),
            "noise_scale": self.ml["noise_var"].sqrt().clone(),
        }

    def decoder_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, mu, sigma): Pyro parameters, or fixed tensors with ``train_decoder=False``."""
        if self._fixed is not None:
            f = self._fixed
            return f["W"], f["mu"], f["noise_scale"]
        init = {}

        def start(name: str) -> torch.Tensor:
            if not init:
                init.update(self._initial_decoder())
            return init[name].clone()

        weight = pyro.param("W", lambda: start("W"))
        mean = pyro.param("mu", lambda: start("mu"))
        scale = pyro.param(
            "noise_scale", lambda: start("noise_scale"), constraint=constraints.positive
        )
        return weight, mean, scale

    def build_networks(self) -> None:
        self.decoder = "linear"

    def prior(self) -> dist.TorchDistribution:
        q = self.latent_dim
        eye = torch.eye(q, dtype=self.dtype, device=self.device)
        zeros = torch.zeros(q, dtype=self.dtype, device=self.device)
        return dist.MultivariateNormal(zeros, scale_tril=eye, validate_args=False)

    def model(self, subsample_size: int | None = None) -> None:
        weight, mean, scale = self.decoder_params()
        with self.plate(subsample_size) as idx:
            z = pyro.sample("z", self.prior())
            x = self.observed(None if subsample_size is None else idx)
            pyro.sample("x", LinearGaussian(z, weight, mean, scale), obs=x)

    def build_guide(self, name: str) -> AmortizedGuide:
        if name not in self.guides:
            return super().build_guide(name)
        covariance = "full" if name == "full-covariance" else "diagonal"
        self.encoder = LinearGaussianEncoder(
            self.data_dim, self.latent_dim, covariance, input_shift=self.x.mean(0), dtype=self.dtype
        ).to(self.device)
        return AmortizedGuide(self, self.encoder)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        weight, mean, _ = (p.detach() for p in self.decoder_params())
        return z.to(self.dtype) @ weight.T + mean

    # -- what is exact --------------------------------------------------------------------------
    @torch.no_grad()
    def current(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, mu, sigma^2) at the current parameters."""
        weight, mean, scale = (p.detach() for p in self.decoder_params())
        return weight, mean, scale**2

    @torch.no_grad()
    def point_log_evidence(self, x: torch.Tensor | None = None) -> torch.Tensor:
        weight, mean, var = self.current()
        x = self.x if x is None else x
        return gaussian_log_density(x, mean, ppca_covariance(weight, var))

    def log_evidence(self) -> float:
        return float(self.point_log_evidence().sum())

    def exact_elbo(self, guide: AmortizedGuide, guide_name: str) -> float:
        """log p(x) minus the closed-form KL(q(z | x_n) || p(z | x_n)) of every row."""
        return self.log_evidence() - float(self.analytic_gap(guide).sum())

    def max_log_evidence(self) -> float:
        """The closed-form maximum-likelihood pPCA log-likelihood (Tipping & Bishop 1999)."""
        return float(self.ml["log_likelihood"])

    def best_elbo(self, guide: str) -> float | None:
        if guide == "full-covariance":
            return self.log_evidence()
        if guide == "diagonal":
            weight, _, var = self.current()
            return self.log_evidence() - self.num_data * diagonal_gap(weight, var)
        return None

    @torch.no_grad()
    def analytic_gap(self, guide: AmortizedGuide, x: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z | x_n) || p(z | x_n)) for every row, in closed form: log p(x_n) - ELBO_n."""
        x = self.x if x is None else x
        weight, mean, var = self.current()
        a, b, cov = ppca_posterior(weight, mean, var)
        encoder = guide.sync()
        loc_q, tril = encoder(x)
        cov_q = tril @ tril.T
        return gaussian_kl(loc_q, cov_q, x @ a.T + b, cov)

    def set_encoder(self, guide: AmortizedGuide, *, best: bool = True) -> None:
        """Write the exact posterior map (full covariance), or the best diagonal Gaussian
        (diagonal: the exact means, variances 1 / Lambda_ii), into the param store."""
        weight, mean, var = self.current()
        a, b, cov = ppca_posterior(weight, mean, var)
        covariance = guide.encoder.covariance
        if covariance == "full":
            tril = torch.linalg.cholesky(cov)
        else:
            precision = torch.linalg.inv(cov)
            tril = torch.diag_embed(precision.diagonal().rsqrt())
        store = pyro.get_param_store()
        values = guide.encoder.raw_values(a, b, tril)
        for key, value in values.items():
            store[f"{guide.module_name}$$${key}"] = value.clone()
        guide.sync()

    @torch.no_grad()
    def pca_score(self) -> float:
        """scikit-learn's ``PCA(q).fit(x).score(x)``: its mean log-likelihood per point."""
        from sklearn.decomposition import PCA

        x = self.x.cpu().numpy()
        return float(PCA(n_components=self.latent_dim, svd_solver="full").fit(x).score(x))

    def summary(self, guide: AmortizedGuide, guide_name: str) -> dict[str, Any]:
        n, d = self.num_data, self.data_dim
        weight, _, var = self.current()
        evidence = self.point_log_evidence()
        gap_train = self.analytic_gap(guide)
        c = n / (n - 1)
        ml = self.ml["log_likelihood"]
        x_test = self.x_test
        test_evidence = self.point_log_evidence(x_test)
        test_gap = self.analytic_gap(guide, x_test)
        test = self.test_diagnostics(guide, self.test_particles)
        gram = weight.T @ weight
        off = gram - torch.diag_embed(gram.diagonal())
        return {
            "num_train": n,
            "num_test": int(x_test.shape[0]),
            "log_evidence_per_point": float(evidence.mean()),
            "analytic_elbo_per_point": float((evidence - gap_train).mean()),
            "analytic_gap_per_point": float(gap_train.mean()),
            "closed_form_max_log_likelihood_per_point": ml / n,
            "shortfall_from_closed_form_per_point": ml / n - float(evidence.mean()),
            "sklearn_pca_score_per_point": self.pca_score(),
            "sklearn_pca_score_explained": (
                "PCA.score uses the covariance with divisor N-1, exactly N/(N-1) times the ML "
                "covariance, so it is below the closed-form maximum by "
                "(D/2)(log c + 1/c - 1) per point, c = N/(N-1)"
            ),
            "sklearn_expected_difference_per_point": 0.5 * d * (math.log(c) + 1 / c - 1),
            "best_diagonal_gap_per_point": diagonal_gap(weight, var),
            "noise_var": float(var),
            "noise_var_ml": float(self.ml["noise_var"]),
            "w_offdiagonal_gram_norm": float(off.norm() / gram.norm()),
            "test": {
                **test,
                "analytic_elbo_per_point": float((test_evidence - test_gap).mean()),
                "analytic_gap_per_point": float(test_gap.mean()),
            },
            "collapse": self._collapse_summary(guide),
        }


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def _image_grid(ax, images: np.ndarray, shape: tuple[int, int], ncols: int, vmax=None) -> None:
    h, w = shape
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    canvas = np.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1), np.nan)
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i].reshape(
            h, w
        )
    lo = np.nanmin(canvas)
    ax.imshow(canvas, cmap="gray_r", vmin=min(lo, 0.0), vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_reconstructions(model: _AmortizedModel, guide: AmortizedGuide, count: int = 12):
    """Test images (top) and the decoder's mean at their posterior mean (bottom)."""
    import matplotlib.pyplot as plt

    x = model.x_test[:count]
    recon = model.decode_mean(model.posterior_means(guide, x)).cpu().numpy()
    fig, axes = plt.subplots(2, 1, figsize=(1.0 * count, 2.6), constrained_layout=True)
    original = x.cpu().numpy()
    vmax = max(original.max(), recon.max())
    _image_grid(axes[0], original, model.image_shape, count, vmax)
    _image_grid(axes[1], recon, model.image_shape, count, vmax)
    axes[0].set_title("test images")
    axes[1].set_title("reconstructions E[x | z = E_q z]")
    fig.suptitle(model.title)
    return fig


def plot_prior_samples(model: _AmortizedModel, count: int = 64, seed: int = 0):
    """Decoder means E[x | z] at draws z ~ N(0, I) from the prior."""
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(count, model.latent_dim, generator=gen, dtype=model.dtype).to(model.device)
    images = model.decode_mean(z).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.0, 5.2), constrained_layout=True)
    _image_grid(ax, images, model.image_shape, int(math.sqrt(count)))
    ax.set_title(f"{model.title}: E[x | z], z ~ N(0, I)")
    return fig


def plot_latent_map(model: _AmortizedModel, guide: AmortizedGuide):
    """Posterior means E_q[z | x] of the training points, coloured by label; for q > 2 on the
    first two principal axes of the means."""
    import matplotlib.pyplot as plt

    means = model.posterior_means(guide, model.x).double().cpu().numpy()
    if means.shape[1] > 2:
        centred = means - means.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        labels = ("principal axis 1 of E_q[z]", "principal axis 2 of E_q[z]")
    elif means.shape[1] == 2:
        xy, labels = means, ("E_q[z_1]", "E_q[z_2]")
    else:
        xy = np.stack([means[:, 0], np.zeros(len(means))], 1)
        labels = ("E_q[z_1]", "")
    fig, ax = plt.subplots(figsize=(6.0, 5.0), constrained_layout=True)
    if model.labels is not None:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=model.labels, cmap="tab10", s=6, alpha=0.7)
        fig.colorbar(sc, ax=ax, label="label")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.7)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(f"{model.title}: latent map (training points)")
    return fig


def plot_kl_per_dim(report: CollapseReport, title: str):
    """KL(q(z_d | x) || N(0, 1)) per dimension, and the activity Cov_x E_q[z_d] with the 0.01
    threshold of Burda et al. (2016)."""
    import matplotlib.pyplot as plt

    dims = np.arange(1, report.latent_dim + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6), constrained_layout=True)
    colors = ["C0" if a else "0.6" for a in report.active]
    axes[0].bar(dims, report.kl_per_dim, color=colors)
    axes[0].set_title(f"KL per dimension ({report.kl_method}), nats per point")
    axes[1].bar(dims, report.activity, color=colors)
    axes[1].axhline(report.threshold, color="k", ls="--", lw=1, label="0.01 (Burda et al.)")
    axes[1].set_yscale("log")
    positive = [a for a in report.activity if a > 0]
    bottom = min([report.threshold / 10, *(a / 2 for a in positive)])
    axes[1].set_ylim(bottom=bottom)
    axes[1].set_title(f"activity Cov_x E_q[z_d]: {report.active_units} active units")
    axes[1].legend(loc="lower right")
    for ax in axes:
        ax.set_xlabel("latent dimension")
        ax.set_xticks(dims)
    fig.suptitle(title)
    return fig


def plot_training(history, title: str):
    """ELBO terms over training: the ELBO at KL weight 1 with its two halves, and the KL
    weight of the annealing schedule."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12.0, 3.6), constrained_layout=True)
    h = history.iloc[1:] if len(history) > 2 else history
    axes[0].plot(h["step"], h["elbo"], color="C0", label="ELBO (KL weight 1)")
    axes[0].set_title("ELBO")
    axes[1].plot(h["step"], h["expected_log_likelihood"], color="C2")
    axes[1].set_title("reconstruction E_q log p(x | z)")
    axes[2].plot(h["step"], h["kl"], color="C3", label="KL(q || prior)")
    axes[2].set_title("KL(q(z | x) || N(0, I))")
    twin = axes[2].twinx()
    twin.plot(history["step"], history["kl_weight"], color="0.4", ls="--", label="KL weight")
    twin.set_ylim(-0.05, 1.05)
    twin.set_ylabel("KL weight (annealing)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("nats (total over the data)")
    fig.suptitle(title)
    return fig
