"""The online study: on-policy contrastive training (``--online``) against TRL's ``GRPOTrainer`` and against offline
NCA, on the verifiable arithmetic task, from one base policy μ.

An experiment package: it uses the trainer library (:mod:`nca_lab.llm`, whose ``--online`` mode it drives), TRL's
trainer (the peer, called as TRL ships it) and the task of :mod:`nca_lab.llm.study`; the library never imports it.
Modules: ``pipeline`` (configuration, methods, state, CLI), ``runs`` (one training run + its checkpoint
evaluations, ours or TRL's), ``trl_grpo`` (the GRPOTrainer run), ``stages`` (one function per stage), ``report``
(JSON, Markdown, figures).  Run: ``python -m nca_lab.llm.online_study --scale cpu --out DIR``.
"""
