"""nca_lab: contrastive alignment losses made checkable.

One loss module (:mod:`nca_lab.losses`) serves a toy bandit world (:mod:`nca_lab.toy`,
closed forms in :mod:`nca_lab.theory`) and an LLM world (:mod:`nca_lab.llm`).
"""

__version__ = "0.1.0"
