"""The verifiable-reasoning study of the NCA paper's four claims (issue 5): an experiment that uses the trainer
library (:mod:`nca_lab.llm.train` and the modules beside it) and is never imported by it.

``python -m nca_lab.llm.study --scale tiny|cpu|gpu`` runs the whole pipeline (recipes ``llm/study/<scale>.yaml``,
results ``llm/results/study_<scale>.json|.md``; see ``llm/study/README.md``).  Where each part lives:

``task``         the arithmetic task, its exact verifier, the fixed splits and the character tokenizer;
``base_policy``  the base policy μ, trained from scratch (``python -m nca_lab.llm.study.base_policy``);
``sampling``     K responses per prompt from a policy, scored; Monte-Carlo KL
                 (``python -m nca_lab.llm.study.sampling``);
``pipeline``     the driver: recipes, stages, evaluation, statistics and the report (``python -m nca_lab.llm.study``);
``plots``        the report's figures.
"""
