"""The trainer at model scale (the ≥ 100M-parameter bf16 run): a ≥ 100M-parameter Llama built from a config,
trained on generated data, with its cost recorded; an experiment that uses the trainer library and is never
imported by it.

``python -m nca_lab.llm.scale_run`` runs it; the code is in :mod:`nca_lab.llm.scale_run.run`; the recorded run
and its command are in ``llm/scale/``.
"""
