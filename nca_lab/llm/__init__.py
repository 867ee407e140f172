"""The LLM world: a trainer library, and the experiments that use it.

The library is the modules of this folder: preference data (``data``, with ``data_fields`` and ``data_files``),
tokenisation, collation, sequence log-probabilities (``logps``), the reference cache, metrics, the
``ContrastiveTrainer``, its configuration and the command line ``python -m nca_lab.llm.train`` (``train``,
``demo``, ``run_dir``, ``callbacks``), FSDP2 sharding (``sharding``: ``--fsdp``), on-policy training with a
reward function (``online``, ``rewards``: ``--online``), and the registry of models shipped inside PyPI
packages (``packaged``: ``smollm2-135m-instruct``, the dequantised Q4_1 SmolLM2-135M-Instruct).  It never
imports an experiment (the built-in reward ``--reward arithmetic`` is a ``module:function`` string, imported
only when a run asks for it).

The experiments are the subpackages, each run with ``python -m``:

:mod:`nca_lab.llm.study`      the verifiable-reasoning study of the NCA paper's four claims;
:mod:`nca_lab.llm.real_model` LoRA alignment of the real pretrained SmolLM2 on verifiable arithmetic;
:mod:`nca_lab.llm.bench`      the benchmark against TRL's ``DPOTrainer``;
:mod:`nca_lab.llm.scale_run`  the trainer at model scale, with its cost recorded.
"""
