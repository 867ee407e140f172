"""``python -m nca_lab.llm.bench``: nca_lab's trainer against TRL's ``DPOTrainer``, side by side in one process.

One command builds a ``LlamaForCausalLM`` from a config (random weights, seeded; sizes in
:data:`nca_lab.llm.scale_run.run.SIZES`, ``0.5b`` on a GPU), saves it with the offline tokenizer, generates
scored data with varied lengths (:func:`nca_lab.llm.scale_run.run.generate_rows`) and trains the *same* saved
model on the *same* data, batch and sequence lengths for a fixed number of steps with:

* nca_lab (``python -m nca_lab.llm.train``'s in-process entry point ``config_from_args`` + ``run``), losses
  ``dpo`` and ``nca_pair``, in its base configuration — response-only chunked log-softmax, precomputed
  reference, no host-device synchronisation inside the step; on a GPU also padding-free packing
  (``flex_attention``) and bf16 mixed precision — and with each of these flipped in turn, plus the
  shared-prompt layout and ``torch.compile`` switched on;
* TRL ``DPOTrainer`` with ``loss_type="sigmoid"`` and ``"nca_pair"``, ``precompute_ref_log_probs`` off and on;
* the K = 4 dataset: nca_lab's ``nca`` and ``infonca`` over the K = 4 rows (``nca`` also with the shared
  prompt) against TRL (its fastest K = 2 configuration) over the same rows expanded to best-vs-rest pairs,
  one pass each.

Definitions (also written into the JSON):

* tokens = dataset tokens: per sequence, prompt + response tokens (BOS/EOS included, no padding; the prompt is
  counted once per response, as TRL sees it). tokens/s = tokens / (reference precompute + ``train_runtime``),
  both measured in the run: TRL's precompute runs in its constructor and is timed there.
* pairs/s = preference pairs per second: one per prompt at K = 2; K − 1 (best vs rest) per prompt at K = 4.
* peak memory = ``torch.cuda.max_memory_allocated`` from the trainer's construction to the end of training
  (reset before each configuration). On a CPU it is not measured (``null``): the process's RSS peak cannot be
  attributed to one configuration.
* MFU = (6·N·tokens for the policy's forward and backward + 2·N·tokens for the reference forward) / seconds /
  peak bf16 dense FLOP/s of the GPU (:data:`nca_lab.llm.bench.configs.PEAK_FLOPS`; ``null`` on CPU or an unknown
  GPU). N = parameters without the input embedding (a lookup); attention's T² term is left out, as in the usual
  6N rule.
* loss agreement: separate 2-step float32 runs of nca_lab ``dpo``/``nca_pair`` and TRL ``sigmoid``/``nca_pair``
  (precomputed reference, ``logging_steps=1``, same seed hence the same sampler order): the loss logged at
  step 2 — after the first optimizer step — must agree within :data:`nca_lab.llm.bench.configs.LOSS_TOLERANCE`;
  the token sequences each trainer built are compared too (``token_sequences_identical``).

* profile (``--profile-steps N``): nca_lab's base ``dpo`` configuration run again for N steps under
  ``torch.profiler``, outside the timed runs; operators' self time (CUDA kernels on a GPU) grouped into matmul,
  attention, loss head, optimizer, copies, elementwise, data loading and other — what bounds the step where a
  target is missed.

Results: ``OUT/bench.json`` (every number, the command, device, versions) and ``OUT/bench.md`` (tables);
``OUT/bench_partial.json`` after every configuration, so a run cut off by a time limit keeps what it measured.

Where each part lives (modules of this package): ``run`` (the command line and ``run_bench``, which runs every
configuration), ``configs`` (the settings, nca_lab's base configuration and its ablations, the constants),
``rows`` (the generated data, TRL's pairs of it, its tokens), ``trainers`` (one run of each trainer),
``agreement`` (the loss-agreement check), ``profiling`` (``--profile-steps``), ``report`` (``bench.md``).
"""
