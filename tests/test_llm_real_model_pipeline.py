"""``python -m nca_lab.llm.real_model --scale tiny`` end to end on the real SmolLM2 (dequantised Q4_1), cut after
two stages and resumed, with the records the recorded CPU run is read from."""

from __future__ import annotations

import json

import pytest

from nca_lab.llm.real_model.pipeline import main

pytestmark = pytest.mark.slow  # ~3 min on 2 cores: 3 + 3 LoRA runs of 2 steps, generation of a few tokens

RECORD_KEYS = {"method", "k", "seed", "beta", "alpha", "accuracy", "reward", "kl", "logp_best_change",
               "logp_worst_change", "model", "device"}


def test_tiny_pipeline_cut_and_resumed(real_model_dir, tmp_path, capsys):
    out, res, fig = tmp_path / "run", tmp_path / "results", tmp_path / "figures"
    common = ["--scale", "tiny", "--out", str(out), "--results-dir", str(res), "--figures-dir", str(fig)]
    assert main(common + ["--stages", "base,sample"]) == 0          # a cut after two stages
    state = json.loads((out / "state.json").read_text())
    assert set(state["stages"]) == {"base", "sample"}
    base_seconds = state["stages"]["base"]["seconds"]
    assert main(common) == 2                                        # a finished stage is never silently redone
    assert "add --resume" in capsys.readouterr().err
    assert main(common + ["--resume"]) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["stages"]["base"]["seconds"] == base_seconds       # not recomputed
    assert set(state["stages"]) == {"base", "sample", "probe", "seeds"}

    result = json.loads((res / "real_smollm2_tiny.json").read_text())
    assert result["remaining_stages"] == []
    finals = [r for r in result["records"] if r["stage"] == "seeds"]
    assert {r["method"] for r in finals} == {"dpo", "nca", "infonca"}
    for r in result["records"]:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["model"] == "smollm2-135m-instruct" and "dequantised Q4_1" in r["model_provenance"]["provenance"]
        assert r["seed"] != 0 or r["stage"] == "probe"                # final seeds are never the probe's run
        assert len(r["per_prompt"]["reward"]) == r["n"]
        # the probe ranks by sampled reward only: greedy accuracy and Δ log π are measured on final runs
        assert (r["accuracy"] is not None) == ("n_logp" in r) == (r["stage"] == "seeds")
        assert r["stage"] == "seeds" or r["logp_best_change"] is None
        assert isinstance(r["kl"], float)                            # a number (strict JSON has no NaN)
    for r in finals:  # the tiny samples may all tie (then nothing to measure: 0 rows, null in strict JSON)
        assert (r["n_logp"] >= 1) == (r["logp_best_change"] is not None) == (r["logp_worst_change"] is not None)
    assert "NaN" not in (out / "state.json").read_text() and "NaN" not in (res / "real_smollm2_tiny.json").read_text()
    md = (res / "real_smollm2_tiny.md").read_text()
    assert "dequantised Q4_1" in md and "Paired differences" in md
    assert (fig / "real_smollm2_tiny.png").stat().st_size > 10_000
    # rows of the sampled data are chat conversations with scored responses the trainer accepts
    row = json.loads((out / "data_k2.jsonl").read_text().splitlines()[0])
    assert row["prompt"][0]["role"] == "system" and len(row["responses"]) == len(row["rewards"]) >= 2


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["--scale", "tiny", "--out", str(tmp_path), "--stages", "base,nope"]) == 2
    assert capsys.readouterr().err.strip() == "error: --stages: unknown stage(s) ['nope']; known: " \
                                              "base,sample,probe,seeds,report"


def test_logp_changes_are_policy_minus_mu_of_best_and_worst(real_model_dir, tmp_path):
    """Δ log π(best / worst) of the experiment equals log π − log μ of the best and the worst response computed
    independently from the full logits of the LoRA policy and of the base model."""
    import torch
    from transformers import AutoModelForCausalLM

    from nca_lab.llm.real_model.pipeline import SCALES, Experiment
    from nca_lab.llm.real_model.stages import data_path, logp_changes, train_argv
    from nca_lab.llm.real_model.prompts import chat_prompt
    from nca_lab.llm.study.task import Problem
    from nca_lab.llm.tokenization import tokenize_record
    from nca_lab.llm.train import main as train_main

    exp = Experiment(SCALES["tiny"], tmp_path, "test")
    rows = [{"prompt": chat_prompt(Problem((a, b), ("+",))), "responses": [f"{a} + {b} = {a + b}.\nAnswer: {a + b}",
                                                                          f"Answer: {a + b + 3}", "I am not sure."],
             "rewards": [1.0, 0.0, 0.0]} for a, b in ((12, 30), (7, 99))]
    rows.append({**rows[0], "rewards": [0.5, 0.5, 0.5]})  # all tied: not measured
    data_path(exp).write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    assert train_main(train_argv(exp, "dpo", 0.1, 1, run_dir) + ["--max-steps", "2", "--lr", "5e-3"]) == 0
    policy = exp.policy(str(run_dir))
    got = logp_changes(exp, policy)
    assert got["n_logp"] == 2

    base = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()

    def logp(model, prompt_ids, response_ids):
        ids = torch.tensor([prompt_ids + response_ids])
        with torch.no_grad():
            lp = model(ids).logits[0, :-1].float().log_softmax(-1)
        return lp[len(prompt_ids) - 1:].gather(-1, ids[0, len(prompt_ids):, None]).sum().item()

    best, worst = [], []
    for row in rows[:2]:
        t = tokenize_record(row, exp.tokenizer, max_length=512)
        for k, out in ((0, best), (1, worst)):  # best: reward 1 (index 0); worst: lowest index among the 0s
            out.append(logp(policy, t["prompt_ids"], t["response_ids"][k])
                       - logp(base, t["prompt_ids"], t["response_ids"][k]))
    # float32 sums over ~20 tokens along two code paths (chunked head vs full logits)
    assert got["logp_best_change"] == pytest.approx(sum(best) / 2, abs=2e-3)
    assert got["logp_worst_change"] == pytest.approx(sum(worst) / 2, abs=2e-3)
    assert got["logp_best_change"] > got["logp_worst_change"]  # DPO pushed them apart
