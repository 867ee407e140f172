"""The toy bandit world: instances (``bandit``), exact population losses (``population``) and their
minimisers (``solve``). See DESIGN.md, "The toy contract"."""

from . import bandit
from .bandit import random_instance
from .population import population_loss
from .solve import IllConditionedWarning, NoMinimiserError, optimum

__all__ = ["bandit", "random_instance", "population_loss", "optimum", "NoMinimiserError", "IllConditionedWarning"]
