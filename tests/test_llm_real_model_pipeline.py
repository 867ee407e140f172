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
    for r in finals:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
    for r in result["records"]:
        assert r["model"] == "smollm2-135m-instruct" and "dequantised Q4_1" in r["model_provenance"]["provenance"]
        assert r["seed"] != 0 or r["stage"] == "probe"                # final seeds are never the probe's run
        assert len(r["per_prompt"]["reward"]) == r["n"]
        assert ("accuracy" in r) == (r["stage"] == "seeds")  # the probe ranks by sampled reward only
        assert r["kl"] == r["kl"]                                    # a number, not NaN
    for r in finals:
        assert {"logp_best_change", "logp_worst_change"} <= set(r) and r["n_logp"] >= 1
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
