"""The loss surrogate of method.md section 5: a botorch ``SingleTaskGP`` with a floored-log outcome and a signed linear mean.

One GP serves the training-time search (:mod:`coalora.search.round`, the probe loss) and the app's front
(:mod:`coalora.search.front`, log ppl = mean NLL, or log KL): inputs are :mod:`coalora.search.encoding`'s
``[n, 2]``, the outcome ``[n]`` is a loss whose values span a flat floor (high bits) and an exploding tail
(low bits). Three choices make that one smooth, extrapolating regression:

* outcome ``log(y - floor)`` before standardising (:class:`FloorLog`), the floor a little below the
  training minimum: the many evaluations near the floor spread out and the tail is compressed;
  predictions are the shifted log-normal's moments;
* a linear mean with fixed slope signs (:class:`SignedLinearMean`): beyond the measured bits the GP
  reverts to its mean, so the mean's slope decides every extrapolation, and quantizing more finely
  never hurts on average;
* ARD RBF kernel (botorch's default), fitted by L-BFGS for at most :data:`FIT_MAXITER` steps.

Uncertainty. :func:`posterior` gives the latent f's moments (what the acquisition integrates over);
:func:`predictive_band` gives the band a held-out evaluation falls in: the latent variance plus the
fitted observation noise, widened by a calibration factor (:func:`band_scale`) set from the training
points' closed-form leave-one-out z-scores. The factor is needed because the residuals are not
Gaussian with one variance: the two-number encoding cannot tell apart every configuration, and the
misfit is largest at the low-bit tail and at configurations unlike the rest, which the homoscedastic
noise averages away. The evaluation noise itself is small and shared: every configuration is scored on
the same windows, so per-window spread says little about differences between configurations. The
band is the central 95.45% interval of the shifted log-normal (the latent's +-2 sigma mapped back),
so it never extends below the floor.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from botorch.models.transforms.outcome import OutcomeTransform
from botorch.models.transforms.utils import norm_to_lognorm_mean, norm_to_lognorm_variance
from botorch.posteriors import Posterior, TransformedPosterior
from gpytorch.means import Mean

from coalora.errors import CoaloraError

FLOOR_GAP = 0.5
""":class:`FloorLog`'s floor lies this fraction of (median - minimum) below the training minimum."""
FIT_MAXITER = 50
"""L-BFGS iterations of a fit: enough on the two-number encoding (fitting to convergence gains nothing)."""
BAND_Z = 2.0
"""Half-width of :func:`predictive_band` in (calibrated) latent standard deviations."""
BAND_COVERAGE = math.erf(BAND_Z / math.sqrt(2.0))
"""0.9545: the share of held-out evaluations the band is calibrated to hold."""


class FloorLog(OutcomeTransform):
    """Outcome transform ``y -> log(y - floor)`` for one output; the floor is set from the training data.

    ``floor = min(y) - FLOOR_GAP * (median(y) - min(y))`` (at least 1e-3 below the minimum). The
    posterior in ``y`` is a shifted log-normal: :meth:`untransform_posterior` gives its exact mean and
    variance. Known observation noise ``Yvar`` maps by the delta method: ``Yvar / (Y - floor)^2``.
    """

    def __init__(self, gap: float = FLOOR_GAP) -> None:
        super().__init__()
        self.gap = gap
        self.register_buffer("floor", torch.zeros((), dtype=torch.float64))

    def forward(self, Y: torch.Tensor, Yvar: torch.Tensor | None = None,  # noqa: N803 (botorch's names)
                X: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: N803
        """``Y [n, 1]`` -> ``log(Y - floor)``; in training mode the floor is first set from ``Y``."""
        if self.training:
            lo, med = Y.min(), Y.median()
            self.floor = (lo - torch.clamp(self.gap * (med - lo), min=1e-3)).detach().to(self.floor)
        shifted = (Y - self.floor).clamp_min(1e-12)
        return torch.log(shifted), None if Yvar is None else Yvar / shifted.pow(2)

    def untransform(self, Y: torch.Tensor, Yvar: torch.Tensor | None = None,  # noqa: N803
                    X: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: N803
        shifted = torch.exp(Y)
        return self.floor + shifted, None if Yvar is None else Yvar * shifted.pow(2)

    def untransform_posterior(self, posterior: Posterior, X: torch.Tensor | None = None) -> TransformedPosterior:  # noqa: N803
        floor = self.floor
        return TransformedPosterior(posterior, sample_transform=lambda s: floor + torch.exp(s),
                                    mean_transform=lambda m, v: floor + norm_to_lognorm_mean(m, v),
                                    variance_transform=norm_to_lognorm_variance)


class SignedLinearMean(Mean):
    """A linear mean ``x @ w + b`` whose weights have fixed signs: ``w_j = sign_j * softplus(raw_j)``.

    Left free, the marginal likelihood can buy a slightly better fit of the low-bit tail with a
    positive slope in bits, and then predicts high-bit candidates far worse than measured ones; the
    sign is known, only the size is learned. Inputs ``[..., n, d]`` -> ``[..., n]``; ``signs`` has one
    entry (+1 or -1) per input column. The slopes start at 1 (standardised outcome per unit of the
    [0, 1] input): the fit stops after :data:`FIT_MAXITER` steps, and from a flat start (softplus
    gradient ~1e-3) the slope would never grow.
    """

    def __init__(self, signs: tuple[int, ...]) -> None:
        super().__init__()
        if not signs or any(s not in (-1, 1) for s in signs):
            raise CoaloraError(f"linear mean signs must be +1 or -1 per input column, got {signs!r}")
        self.register_buffer("signs", torch.tensor(signs, dtype=torch.float64))
        raw = math.log(math.e - 1.0)  # softplus(raw) = 1
        self.register_parameter("raw_weights", torch.nn.Parameter(torch.full((len(signs),), raw, dtype=torch.float64)))
        self.register_parameter("bias", torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)))

    @property
    def weights(self) -> torch.Tensor:
        """The signed slopes ``[d]``."""
        return self.signs * torch.nn.functional.softplus(self.raw_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weights + self.bias


def _mean_module(x: torch.Tensor, signs: tuple[int, ...] | None) -> Mean:
    from gpytorch.means import LinearMean

    if signs is not None:
        if len(signs) != x.shape[-1]:
            raise CoaloraError(f"{len(signs)} mean signs for {x.shape[-1]} input columns")
        return SignedLinearMean(signs).to(x)
    mean = LinearMean(x.shape[-1]).to(x)
    with torch.no_grad():  # gpytorch draws the initial weights at random; start flat, deterministically
        mean.weights.zero_()
        mean.bias.zero_()
    return mean


def fit_gp(x: torch.Tensor, y: torch.Tensor, warm=None, optimize: bool = True, maxiter: int = FIT_MAXITER,
           signs: tuple[int, ...] | None = None):
    """A ``SingleTaskGP`` (ARD RBF, linear mean) on inputs ``[n, d]`` and losses ``[n]``.

    The outcome is transformed by :class:`FloorLog` then standardised; :func:`posterior` answers in
    the loss's units. ``warm``: a previous GP whose hyperparameters start the fit (or are kept, with
    ``optimize=False``); the outcome transform is always set from ``y`` anew. ``signs``: the linear
    mean's slope signs per column (:class:`SignedLinearMean`); None leaves them free. The returned
    model carries ``band_scale`` (:func:`band_scale`) for :func:`predictive_band`.
    """
    from botorch.exceptions.warnings import OptimizationWarning
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import ChainedOutcomeTransform, Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    transform = ChainedOutcomeTransform(log=FloorLog(), standardize=Standardize(m=1))
    gp = SingleTaskGP(x, y[:, None], outcome_transform=transform, mean_module=_mean_module(x, signs))
    if warm is not None:
        gp.load_state_dict({k: v for k, v in warm.state_dict().items() if not k.startswith("outcome_transform")},
                           strict=False)
    if optimize:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizationWarning)  # stopping at maxiter is intended
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp),
                             optimizer_kwargs={"options": {"maxiter": maxiter}})
    gp.eval()
    gp.band_scale = band_scale(gp)
    return gp


def _train_factor(gp, extra: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Training inputs ``[n, d]``, the Cholesky factor of ``K + noise I`` ``[n, n]`` and ``K^-1 (y - m) [n]``.

    ``extra``: more observations (inputs ``[k, d]``, losses ``[k]``) appended, hyperparameters kept.
    """
    xt, yt = gp.train_inputs[0], gp.train_targets  # yt: in the outcome transforms' space
    if extra is not None:
        xt = torch.cat([xt, extra[0]])
        yt = torch.cat([yt, gp.outcome_transform(extra[1][:, None].to(yt))[0][:, 0]])
    k = gp.covar_module(xt).to_dense()
    k = k + gp.likelihood.noise * torch.eye(len(xt), dtype=k.dtype)
    chol, info = torch.linalg.cholesky_ex(k)
    if info:
        chol = torch.linalg.cholesky(k + 1e-6 * torch.eye(len(xt), dtype=k.dtype))
    alpha = torch.cholesky_solve((yt - gp.mean_module(xt))[:, None], chol)[:, 0]
    return xt, chol, alpha


def latent(gp, x: torch.Tensor, chunk: int = 4096,
           extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent f's mean and variance ``[c]`` at inputs ``[c, d]``, in the transformed (standardised
    floored-log) space, from the Cholesky factor: the marginals only, which ``gp.posterior`` would get
    by building the joint ``c x c`` covariance."""
    with torch.no_grad():
        xt, chol, alpha = _train_factor(gp, extra)
        mus, variances = [], []
        for i in range(0, len(x), chunk):
            xc = x[i:i + chunk]
            ks = gp.covar_module(xc, xt).to_dense()  # [c, n]
            mus.append(gp.mean_module(xc) + ks @ alpha)
            v = torch.linalg.solve_triangular(chol, ks.T, upper=False)
            variances.append((gp.covar_module(xc, diag=True) - v.pow(2).sum(0)).clamp_min(0))
    return torch.cat(mus), torch.cat(variances)


def posterior(gp, x: torch.Tensor, chunk: int = 4096,
              extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of the loss ``[c]`` at inputs ``[c, d]`` (observation noise excluded).

    ``extra``: more observations to condition on, hyperparameters kept: inputs ``[k, d]`` and losses
    ``[k]`` (botorch's ``condition_on_observations``, without its per-call model copy). The latent
    Gaussian is mapped back through the outcome transforms as ``gp.posterior`` does.
    """
    mu, var = latent(gp, x, chunk, extra)
    mu, var = _untransform(gp.outcome_transform, mu, var)
    return mu.numpy(), var.sqrt().numpy()


def predictive_band(gp, x: torch.Tensor, chunk: int = 4096,
                    extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper edges ``[c]`` (loss units) of the calibrated predictive band at inputs ``[c, d]``.

    Latent variance plus observation noise, times ``gp.band_scale`` squared; the transformed-space
    ``mean +- BAND_Z sd`` mapped back through the (monotone) outcome transforms (module docstring).
    """
    return _band(gp, *latent(gp, x, chunk, extra))


def predict(gp, x: torch.Tensor, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`posterior`'s mean and sd and :func:`predictive_band`'s edges ``[c]`` from one latent pass."""
    mu, var = latent(gp, x, chunk)
    lo, hi = _band(gp, mu, var)
    m, v = _untransform(gp.outcome_transform, mu, var)
    return m.numpy(), v.sqrt().numpy(), lo, hi


def _band(gp, mu: torch.Tensor, var: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        sd = (var + gp.likelihood.noise.detach()).sqrt() * getattr(gp, "band_scale", 1.0)
        lo = gp.outcome_transform.untransform((mu - BAND_Z * sd)[:, None])[0][:, 0]
        hi = gp.outcome_transform.untransform((mu + BAND_Z * sd)[:, None])[0][:, 0]
    return lo.numpy(), hi.numpy()


def loo(gp) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form leave-one-out predictions of the training points, hyperparameters kept (Rasmussen &
    Williams eq. 5.12): mean ``[n]`` and predictive variance ``[n]`` (noise included), in the
    transformed space (compare with ``gp.train_targets``)."""
    with torch.no_grad():
        xt, chol, alpha = _train_factor(gp)
        kinv = torch.cholesky_inverse(chol)
        d = torch.diagonal(kinv)
        return gp.train_targets - alpha / d, 1.0 / d


def band_scale(gp) -> float:
    """The factor (>= 1) that makes :data:`BAND_COVERAGE` of the training points' leave-one-out
    z-scores fall within ``+- BAND_Z``: the predictive sd's calibration (module docstring)."""
    if len(gp.train_targets) < 3:
        return 1.0
    mean, var = loo(gp)
    z = ((gp.train_targets - mean) / var.sqrt()).abs().numpy()
    return max(1.0, float(np.quantile(z, BAND_COVERAGE)) / BAND_Z)


def untransform_mean(gp, mu: torch.Tensor) -> torch.Tensor:
    """Transformed-space values ``[c]`` mapped back to loss units (the log-normal's median, no variance)."""
    with torch.no_grad():
        return gp.outcome_transform.untransform(mu[:, None])[0][:, 0]


def _untransform(ot, mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Marginal mean and variance ``[c]`` of a Gaussian ``(mu, var) [c]`` mapped back through ``ot``.

    Handles :func:`fit_gp`'s chain: ``Standardize`` (affine) and :class:`FloorLog` (a shifted
    log-normal, exact moments), innermost first, as ``ChainedOutcomeTransform`` does.
    """
    from botorch.models.transforms.outcome import ChainedOutcomeTransform, Standardize

    if isinstance(ot, ChainedOutcomeTransform):
        for t in reversed(list(ot.values())):
            mu, var = _untransform(t, mu, var)
        return mu, var
    if isinstance(ot, Standardize):
        return mu * ot.stdvs[0, 0] + ot.means[0, 0], var * ot.stdvs[0, 0] ** 2
    if isinstance(ot, FloorLog):
        return ot.floor + norm_to_lognorm_mean(mu, var), norm_to_lognorm_variance(mu, var)
    raise CoaloraError(f"posterior cannot map back through outcome transform {type(ot).__name__}")
