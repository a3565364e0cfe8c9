"""2D flows on the same core: the closed-form Gaussian mixture (the core's test oracle), MLP flows, and the task.

The public pieces for a mixture of one's own (the implementation lives in :mod:`tfftmol.toy2d.gmm`):

* :class:`GaussianMixtureFlow` ``(means, stds, weights=None, dtype=torch.float32)``: an isotropic
  Gaussian mixture in any dimension as an exact :class:`~tfftmol.core.flow.FlowModel`
  (closed-form velocity), with ``sample_data``, ``tilted_linear`` and the exact hinge-tilted
  target ``sample_tilted_hinge``;
* :func:`circle_gmm`, :func:`random_gmm`: the shipped circle and seeded random mixtures;
* :func:`population_threshold`: the exact stage-1 ``(eta*, value)`` of the population for ``r = w·x``;
* :func:`hinge_target_stats`: exact KL, CVaR, VaR and tail mass of the TFFT target at a threshold.

From a config: ``task: toy2d`` with ``options.gmm: {means, stds, weights}`` runs the 2D comparison
(pre-trained vs fine-tuned vs the exact target) on your mixture.
"""
from .gmm import GaussianMixtureFlow, circle_gmm, hinge_target_stats, population_threshold, random_gmm

__all__ = ["GaussianMixtureFlow", "circle_gmm", "population_threshold", "hinge_target_stats", "random_gmm"]
