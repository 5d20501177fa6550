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
  [0, 1]^64 that is bounded because of the dequantisation. Guides: ``mean-field``
  q(z | x) = N(m(x), diag V(x)), trained with the analytic KL (``meanfield``, Kingma & Welling's
  estimator B), or ``iaf``, inverse autoregressive flow layers on top (Kingma et al. 2016).

``linear-vae`` — probabilistic PCA as a VAE.
  Decoder x = W z + mu + eps, eps ~ N(0, sigma^2 I). Everything is Gaussian and known:

  - evidence p(x) = N(x | mu, C), C = W W^T + sigma^2 I (Tipping & Bishop eq. 3);
  - posterior p(z | x) = N(M^{-1} W^T (x - mu), sigma^2 M^{-1}), M = W^T W + sigma^2 I
    (eq. 6): a linear mean and an x-independent covariance, so the encoder family
    ``full-rank`` (m(x) = A x + b, one Cholesky factor) contains it and its best ELBO
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

Files: :mod:`~zoo.models.vae.nonlinear` (``vae``), :mod:`~zoo.models.vae.linear`
(``linear-vae``), :mod:`~zoo.models.vae.base` (what both share: data, split, held-out report,
figures), :mod:`~zoo.models.vae.ppca` (the closed forms), :mod:`~zoo.models.vae.data` (digits
and array files) and :mod:`~zoo.models.vae.figures`. The scaffolding shared with ``scvi`` (the
data as a value, :meth:`~zoo.models.amortized.AmortizedModel.with_data`) is in
:mod:`zoo.models.amortized`.
"""

from zoo.models.vae.base import ArrayVAE
from zoo.models.vae.data import Points, load_digits_data, read_array_file, strict_fraction
from zoo.models.vae.figures import plot_latent_map, plot_prior_samples, plot_reconstructions
from zoo.models.vae.linear import LinearVAE
from zoo.models.vae.nonlinear import MIN_PIXEL_SCALE, VariationalAutoencoder
from zoo.models.vae.ppca import (
    LinearGaussian,
    diagonal_gap,
    ppca_covariance,
    ppca_ml,
    ppca_posterior,
    random_rotation,
)

__all__ = [
    "MIN_PIXEL_SCALE",
    "ArrayVAE",
    "LinearGaussian",
    "LinearVAE",
    "Points",
    "VariationalAutoencoder",
    "diagonal_gap",
    "load_digits_data",
    "plot_latent_map",
    "plot_prior_samples",
    "plot_reconstructions",
    "ppca_covariance",
    "ppca_ml",
    "ppca_posterior",
    "random_rotation",
    "read_array_file",
    "strict_fraction",
]
