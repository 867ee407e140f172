"""``python -m nca_lab.llm.online_study --scale tiny`` end to end (a tiny μ trained from scratch, every method
including TRL's GRPOTrainer), cut after the probe and resumed, plus the pieces the recorded CPU run relies on:
TRL sees the prompts our trainer sees, scores completions as our trainer does, and the matched-KL interpolation."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")

from nca_lab.llm.online_study.pipeline import METHODS, SCALES, main  # noqa: E402
from nca_lab.llm.online_study.report import at_kl  # noqa: E402

pytestmark = pytest.mark.slow  # ~1 min on 2 cores: a 30-step μ, 2 probe runs and 8 runs of 4 steps

RECORD_KEYS = {"method", "online_ref", "k", "seed", "samples", "accuracy", "reward", "kl", "device", "seconds",
               "step", "per_prompt"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("online_study")
    out, res, fig = tmp / "run", tmp / "results", tmp / "figures"
    common = ["--scale", "tiny", "--out", str(out), "--results-dir", str(res), "--figures-dir", str(fig)]
    first = main(common + ["--stages", "base,probe"])   # a cut after the probe
    state_after_probe = json.loads((out / "state.json").read_text())
    again = main(common)                                  # a run in --out is never silently redone
    resumed = main(common + ["--resume"])
    return {"codes": (first, again, resumed), "probe_state": state_after_probe, "out": out, "res": res, "fig": fig,
            "common": common}


def test_cut_and_resumed(tiny_run, capsys):
    assert tiny_run["codes"] == (0, 2, 0)
    probe_state = tiny_run["probe_state"]
    assert set(probe_state["stages"]) == {"base", "probe"}
    state = json.loads((tiny_run["out"] / "state.json").read_text())
    assert set(state["stages"]) == {"base", "probe", "runs"}
    # the resumed invocation kept the base stage and the probe's runs: not recomputed
    assert state["stages"]["base"] == probe_state["stages"]["base"]
    for rid, record in probe_state["runs"].items():
        assert state["runs"][rid]["seconds"] == record["seconds"]
    # a third invocation finds everything done: no run is redone (the state's runs are byte-identical)
    before = (tiny_run["out"] / "state.json").read_text()
    assert main(tiny_run["common"] + ["--resume", "--stages", "probe,runs"]) == 0
    after = json.loads((tiny_run["out"] / "state.json").read_text())
    assert after["runs"] == json.loads(before)["runs"]


def test_records_and_report(tiny_run):
    cfg = SCALES["tiny"]
    result = json.loads((tiny_run["res"] / "online_tiny.json").read_text())
    assert result["remaining_stages"] == []
    finals = [r for r in result["records"] if r["final"]]
    assert {r["method"] for r in finals} == set(METHODS)
    for r in result["records"]:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["seed"] in cfg.seeds and r["seed"] != cfg.probe_seed      # final seeds, never the probe's
        assert r["samples"] == r["step"] * cfg.batch_size * cfg.k
        assert len(r["per_prompt"]["reward"]) == len(r["per_prompt"]["correct"]) == cfg.n_test
        assert r["kl"] == r["kl"] and 0.0 <= r["reward"] <= 1.0              # numbers, in range
    assert {r["step"] for r in result["records"]} == set(cfg.checkpoint_steps)
    for r in finals:
        assert r["samples"] == cfg.samples_per_run
        assert (r["online_ref"] is None) == (METHODS[r["method"]]["kind"] != "online")
    runs = {r["method"]: r for r in result["runs"] if r["split"] == "test"}
    # every run of our trainer and of TRL timed its sampling; the offline method sampled μ once, K per prompt
    for m, r in runs.items():
        assert r["throughput"].get("generation_seconds", 0) > 0 or METHODS[m]["kind"] == "offline"
    offline = runs["nca_offline"]["offline_samples"]
    assert offline["rows"] + offline["dropped_rows"] == cfg.steps * cfg.batch_size
    assert "trl GRPOTrainer" in runs["grpo_dr"]["command"] and "'loss_type': 'dr_grpo'" in runs["grpo_dr"]["command"]
    assert "--online-ref sampler" in runs["nca_sampler"]["command"]
    md = (tiny_run["res"] / "online_tiny.md").read_text()
    assert "Paired against TRL GRPO (dr_grpo)" in md and "matched KL" in md and "Chosen lr" in md
    for name in ("curves", "time"):
        assert (tiny_run["fig"] / f"llm_online_tiny_{name}.png").stat().st_size > 10_000


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["--scale", "tiny", "--out", str(tmp_path), "--stages", "base,nope"]) == 2
    assert capsys.readouterr().err.strip() == "error: --stages: unknown stage(s) ['nope']; known: " \
                                              "base,probe,runs,report"
    assert main(["--scale", "tiny", "--out", str(tmp_path), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers: expected a positive int, got 0"
    assert main(["--scale", "tiny", "--out", str(tmp_path / "new"), "--stages", "runs"]) == 2
    assert "run --stages probe first" in capsys.readouterr().err


def test_trl_sees_our_prompt_ids_and_scores_as_we_do(tiny_run, tmp_path):
    """The peer gets what our --online trainer gets: the same prompt ids (TRL tokenises the text itself) and the
    same reward of a completion (TRL hands the reward function ids; ours decodes the text)."""
    from transformers import AutoTokenizer

    from nca_lab.llm.online import tokenize_prompts
    from nca_lab.llm.online_study.trl_grpo import arithmetic_reward_on_ids, build_trainer
    from nca_lab.llm.study.online_reward import arithmetic_reward
    from nca_lab.llm.study.task import load_splits

    mu_dir = str(tiny_run["out"] / "mu")
    rows = [json.loads(line) for line in (tiny_run["out"] / "data" / "prompts.jsonl").read_text().splitlines()]
    trainer = build_trainer(mu_dir=mu_dir, rows=rows, output_dir=str(tmp_path), loss_type="dr_grpo",
                            scale_rewards="none", lr=1e-3, seed=0, steps=1, batch_size=2, k=2, max_new_tokens=8,
                            temperature=1.0, lr_scheduler="constant", warmup_ratio=0.0, save_steps=1,
                            logging_steps=1)
    tok = AutoTokenizer.from_pretrained(mu_dir)
    ours = [x["prompt_ids"] for x in tokenize_prompts(rows, tok, max_prompt_length=None)]
    theirs, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    assert [list(x) for x in theirs] == ours
    assert ours[0][0] == tok.bos_token_id
    # completions: a correct one, a wrong-answer one, a malformed one with a stray special token, an EOS-less one
    problem = load_splits(level="multi")["train"][0]
    from nca_lab.llm.study.task import format_response, solution_steps

    right = format_response(solution_steps(problem), problem.answer)
    texts = [right, format_response(solution_steps(problem), problem.answer + 1), "<pad>" + right, right]
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts[:3]]
    ids.append(tok(texts[3], add_special_tokens=False)["input_ids"])
    row = {"prompt": problem.prompt, "problem_id": problem.id}
    reward_trl = arithmetic_reward_on_ids(tok)([problem.prompt] * 4, texts, ids, [problem.id] * 4)
    reward_ours = arithmetic_reward([problem.prompt] * 4, texts, [row] * 4)
    assert reward_trl == reward_ours
    assert reward_trl[0] == 1.0 and reward_trl[1] < 1.0 and reward_trl[2] == 0.0


def test_at_kl_interpolates_along_the_path():
    base = {"reward": 0.5}
    run = {"checkpoints": [{"kl": 1.0, "reward": 0.7}, {"kl": 3.0, "reward": 0.6}]}
    assert at_kl(run, base, "reward", 0.0) == 0.5
    assert at_kl(run, base, "reward", 0.5) == pytest.approx(0.6)          # halfway from μ (0, 0.5) to (1, 0.7)
    assert at_kl(run, base, "reward", 2.0) == pytest.approx(0.65)
    assert at_kl(run, base, "reward", 3.5) is None                        # never reached: no extrapolation


def test_checkpoints_must_divide_the_steps(tmp_path, capsys, monkeypatch):
    import dataclasses

    from nca_lab.llm.online_study import pipeline

    monkeypatch.setitem(pipeline.SCALES, "tiny", dataclasses.replace(SCALES["tiny"], steps=5))
    assert main(["--scale", "tiny", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "error: --scale tiny: steps 5 is not a multiple of n_checkpoints 2"


@pytest.mark.parametrize("best, grid", [(1e-5, [1.11e-5, 3.33e-5, 1e-4, 3e-4]),   # extended twice, then stops
                                        (3.33e-5, [1.11e-5, 3.33e-5, 1e-4, 3e-4]),  # 3.33e-5 wins: one more below
                                        (1e-3, [1e-4, 3e-4, 9e-4, 2.7e-3]),          # upward until 9e-4 is inside
                                        (3e-4, [1e-4, 3e-4, 9e-4]),                  # an edge wins: one step past it
                                        (2e-4, [1e-4, 3e-4, 9e-4])])                 # likewise (3e-4 is closer)
def test_probe_extends_the_lr_grid_beyond_a_winning_edge(tmp_path, monkeypatch, best, grid):
    """The probe's lr grid grows one geometric step past an edge that wins (at most twice), with fake runs
    whose validation reward peaks at ``best``."""
    import dataclasses
    import math

    from nca_lab.llm.online_study import stages
    from nca_lab.llm.online_study.pipeline import Experiment

    def fake_run_all(exp, specs, desc):
        for s in specs:
            exp.state["runs"][s["id"]] = {"reward": -abs(math.log(s["lr"] / best))}

    monkeypatch.setattr(stages, "run_all", fake_run_all)
    monkeypatch.setattr(Experiment, "prompts_file", lambda self: tmp_path / "prompts.jsonl")
    cfg = dataclasses.replace(SCALES["tiny"], lrs=(1e-4, 3e-4))
    exp = Experiment(cfg, tmp_path, "test")
    stages.stage_probe(exp)
    assert exp.state["probe"]["grid"] == pytest.approx(grid, rel=1e-9)
    chosen = min(grid, key=lambda lr: abs(math.log(lr / best)))
    assert exp.state["probe"]["lr"] == chosen
    assert exp.state["probe"]["on_edge"] == (chosen in (grid[0], grid[-1]))
