"""``python -m nca_lab.llm.study``: the verifiable-reasoning study of the NCA paper's four claims.

An experiment that uses the trainer library (:mod:`nca_lab.llm.train` and the modules beside it) and is never
imported by it.  One driver process runs the pipeline from a recipe ``llm/study/<scale>.yaml`` (``tiny``,
``cpu``, ``gpu``; every key in ``llm/study/README.md``), stage by stage (``--stages``):

``task``    the fixed splits and the character tokenizer of the arithmetic task;
``base``    train the base policy μ from scratch and evaluate it on the test split;
``sample``  K = 4 responses per training prompt from μ, scored by the exact verifier (K = 2: the first 2 of them);
``sweep``   each grid point of each (method, K) with one seed, on the validation split; the best setting is chosen;
``seeds``   the chosen setting with every seed, on the test split;
``report``  summary table, claim-by-claim comparisons, figures, results JSON + Markdown.

Where each part lives (modules of this package):

``pipeline``     the driver: ``run_study`` and the command line;
``stages``       one function per stage (each stage in detail);
``state``        what ``<out>/state.json`` holds, the run records, μ and the rest the stages share;
``recipe``       the recipes, the methods and their grids, the trainer's command line of one run;
``evaluation``   accuracy, reward and KL(π‖μ) of a policy on a split; the change of log π of best / worst;
``stats``        mean ± std over seeds, the choice of the best setting, the comparison of two methods;
``report``       the four claims and the Markdown summary;
``plots``        the figures;
``task``         the arithmetic task, its exact verifier, the splits and the tokenizer;
``base_policy``  μ's model and its training (``python -m nca_lab.llm.study.base_policy``);
``sampling``     K scored responses per prompt, Monte-Carlo KL (``python -m nca_lab.llm.study.sampling``).

Recipes with ``version: 2`` (``cpu_v2``, ``tiny_v2``) run through the v2 modules: ``pipeline_v2`` (driver),
``recipe_v2`` (recipe checks, run length, final-run order), ``stages_v2`` (per-unit resumable stages: μ per seed,
a sample set per final seed, coordinate sweep with grid extension, checkpoint evaluations), ``report_v2``
(final table, training-time paths, matched KL, paired bootstrap with Holm's adjustment, pending units) and
``results_v2`` (JSON, Markdown, figures).
"""
