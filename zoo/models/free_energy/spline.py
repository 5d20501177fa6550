"""The spline of the ``spline-flow`` recognition density of ``free-energy-perception``.

A monotonic rational-quadratic spline (Durkan, Bekasov, Murray & Papamakarios 2019, "Neural
spline flows", NeurIPS) on scalars, then an affine map, pushes N(0, 1) forward to q(v): a family
that contains every Gaussian (identity spline) and can bend to the skewed posterior of Bogacz's
Exercise 1 (Bogacz 2017, J. Math. Psych. 76, §2.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.distributions.transforms.spline import _monotonic_rational_spline
from torch.distributions import Transform


class ScalarSpline(Transform):
    """A monotonic rational-quadratic spline on [-bound, bound], the identity outside (Durkan,
    Bekasov, Murray & Papamakarios 2019, "Neural spline flows"), acting on scalars.

    Built from unconstrained tensors (``pyro.param`` s): bin widths and heights through a
    softmax, interior knot slopes through a softplus, as in :class:`pyro.distributions.
    transforms.Spline`, whose spline routine it calls."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(
        self,
        widths: torch.Tensor,
        heights: torch.Tensor,
        slopes: torch.Tensor,
        bound: float,
    ) -> None:
        super().__init__(cache_size=1)
        self.params = (
            F.softmax(widths, -1).unsqueeze(0),
            F.softmax(heights, -1).unsqueeze(0),
            F.softplus(slopes).unsqueeze(0),
        )
        self.bound = bound

    def _spline(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w, h, d = self.params
        y, log_det = _monotonic_rational_spline(
            x.unsqueeze(-1), w, h, d, None, inverse=inverse, bound=self.bound
        )
        return y.squeeze(-1), log_det.squeeze(-1)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        y, log_det = self._spline(x, inverse=False)
        self._last = (x, y, log_det)  # ln |T'(x)|, for log_abs_det_jacobian
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x, log_det = self._spline(y, inverse=True)
        self._last = (x, y, -log_det)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        last = getattr(self, "_last", None)
        if last is not None and (x is last[0] or y is last[1]):
            return last[2]
        return self._spline(x, inverse=False)[1]


#: unconstrained slope whose softplus plus the spline's floor of 1e-3 is 1 (identity spline)
IDENTITY_SLOPE = math.log(math.expm1(1.0 - 1e-3))
