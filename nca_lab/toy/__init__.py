"""The toy bandit world: instances (``bandit``), exact population losses (``population``) and their
minimisers (``solve``); finite-data training dynamics (``dynamics``) and the empirical studies (``studies``).

The toy contract (stated here; ``nca_lab.theory``, the tests, the proofs and the plots rely on it):

- A bandit instance is, per context x, a reference distribution μ(·|x) with full support over a finite
  response set Y and rewards r(x, ·). Vectors are float64 numpy arrays or torch tensors of shape ``[Y]``
  (one context) or ``[X, Y]``. :func:`random_instance` draws instances in the setting of
  ``proofs/README.md`` (min μ ≥ 1e-3, r ∈ [−3, 3], optionally a minimum gap between rewards).
- ``nca_lab.theory`` holds the closed forms (float64), e.g. ``infonca_optimum(mu, r, alpha)``,
  ``nca_optimum(mu, r, alpha, K=None)`` (K=None: the K → ∞ target r/α − log E_μ e^{r/α}; finite K: the exact
  finite-K optimum), ``dpo_bt_optimum(mu, r, beta)`` and the other closed forms the propositions of
  ``proofs/README.md`` name.
- :func:`population_loss` ``(name, logpi, mu, r, K, labels="reward", **hparams)``: the exact expectation of
  the registry loss ``name`` (:mod:`nca_lab.losses`) over K responses drawn i.i.d. from μ, as a function of
  the policy log-probabilities ``logpi`` over Y (unconstrained in the free parameterisation). The loss is
  called with ``policy_logps = logpi``, ``ref_logps = log μ`` and ``lengths = None``. ``labels="reward"``:
  the drawn responses carry their rewards r as R (ties skipped as the loss says). ``labels="bt"`` (K = 2):
  Bradley–Terry preference labels, P(y_1 ≻ y_2) = σ(r_1 − r_2): the expectation over both orientations given
  as R = (1, 0), identical draws included (each orientation with probability ½). Expectations are exact:
  multisets are enumerated for small Y and K; for large K (``nca``) one-dimensional integrals are used, e.g.
  E[1/(a + S)] = ∫₀^∞ e^{−ta} φ(t)^{K−1} dt with a = e^{r/α}, S the sum of K−1 i.i.d. draws of a and
  φ(t) = E_μ e^{−t·a}. Nothing is sampled (Monte Carlo would have to state its error).
- :func:`optimum` ``(name, mu, r, K, param="free"|"policy", labels="reward", **hparams)``: the minimiser of the
  population loss to |error|∞ ≤ 1e-6 in its argument (damped Newton; NCA's population loss is separable and
  convex in r_θ). It returns the implicit reward r_θ* = β(log π* − log μ) for reference-based losses and
  log π* for reference-free ones (``cpl``, ``simpo``, ``pro``, …). ``param="free"``: log π unconstrained (the
  energy-model view of the NCA paper); where the minimiser is only defined up to a constant (InfoNCA, DPO)
  the normalised one is returned (:mod:`nca_lab.toy.solve`). ``param="policy"``: π_θ = softmax(θ).
- Training dynamics (finite data, gradient descent or Adam on tabular, log-linear or small neural policies;
  :mod:`nca_lab.toy.dynamics`) record trajectories of log π(y_best), log π(y_worst), KL(π‖μ) and the expected
  reward.
"""

from . import bandit
from .bandit import random_instance
from .population import population_loss
from .solve import IllConditionedWarning, NoMinimiserError, optimum

__all__ = ["bandit", "random_instance", "population_loss", "optimum", "NoMinimiserError", "IllConditionedWarning"]
