"""The benchmark: nca_lab's trainer against TRL's ``DPOTrainer`` on the same model and data (issue 6); an
experiment that uses the trainer library and is never imported by it.

``python -m nca_lab.llm.bench`` runs it; the code and every definition are in :mod:`nca_lab.llm.bench.run`;
recorded runs and the commands that made them are in ``llm/bench/``.
"""
