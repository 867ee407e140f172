"""The verifiable-reasoning study driver (nca_lab.llm.study): the tiny pipeline end to end, and the pieces that
decide what the study reports (selection, summary statistics, comparisons, recipes, command lines)."""

from __future__ import annotations

import json
import math
import shlex

import pytest

from nca_lab.llm.study.pipeline import run_study
from nca_lab.llm.study.recipe import METHODS, grid_settings, load_study_config, recipe_path, train_argv
from nca_lab.llm.study.report import claims
from nca_lab.llm.study.stages import RECORD_KEYS, STAGES
from nca_lab.llm.study.stats import compare, select_best, std, summarise
from nca_lab.llm.config import config_from_args


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("study_tiny")
    result = run_study("tiny", out=str(out / "work"), results_dir=str(out / "results"),
                       figures_dir=str(out / "figures"), progress=False,
                       command="python -m nca_lab.llm.study --scale tiny")
    return out, result


def test_tiny_pipeline_runs_every_stage_and_writes_results(tiny_result):
    out, result = tiny_result
    cfg = load_study_config(recipe_path("tiny"))
    on_disk = json.loads((out / "results" / "study_tiny.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert on_disk["summary"] == json.loads(json.dumps(result["summary"]))
    # every stage left its trace
    assert set(on_disk["timings"]) >= {f"{s}_s" for s in STAGES} | {"total_s"}
    assert on_disk["base_policy"]["steps_done"] == cfg.base["steps"]
    assert {"accuracy", "reward"} <= set(on_disk["base_policy"]["test"])
    assert on_disk["skipped"] == []
    # K = 2 data = the first two of the same K = 4 samples
    k4 = [json.loads(line) for line in (out / "work" / "data_k4.jsonl").read_text().splitlines()]
    k2 = [json.loads(line) for line in (out / "work" / "data_k2.jsonl").read_text().splitlines()]
    assert len(k4) == cfg.data["n_prompts"]
    by_prompt = {r["prompt"]: r for r in k4}
    for row in k2:
        if len(by_prompt[row["prompt"]]["responses"]) == 4:  # no empty sample dropped from this row
            assert row["responses"] == by_prompt[row["prompt"]]["responses"][:2]
            assert row["rewards"] == by_prompt[row["prompt"]]["rewards"][:2]
    runs = on_disk["runs"]
    n_grid = sum(len(grid_settings(m, cfg.grids[m])) for m in cfg.methods) * len(cfg.ks)
    n_final = len(cfg.methods) * len(cfg.ks) * len(cfg.seeds)
    # the sweep's run is reused as the sweep seed's final run
    assert len(runs) == n_grid + n_final - len(cfg.methods) * len(cfg.ks)
    for rec in runs:
        for key in RECORD_KEYS:
            assert key in rec, (rec["run_id"], key)
        assert rec["device"].startswith("cpu")
        assert all(math.isfinite(rec[m]) for m in ("accuracy", "reward", "kl"))
        assert 0.0 <= rec["accuracy"] <= 1.0 and 0.0 <= rec["reward"] <= 1.0
        assert rec["steps"] == cfg.align["max_steps"]
        assert len(rec["trajectory"]["logps/best"]) == cfg.align["max_steps"]  # logging_steps = 1
        # the recorded command line parses to the config that was run
        argv = shlex.split(rec["train_command"])[3:]
        assert argv[:2] == ["--model", on_disk["base_policy"]["path"]]
        parsed = config_from_args(argv)
        assert parsed.loss == METHODS[rec["method"]].loss and parsed.seed == rec["seed"]
        if rec["beta"] is not None:
            assert parsed.beta == rec["beta"]
    finals = [r for r in runs if r["test"] is not None]
    assert {(r["method"], r["k"], r["seed"]) for r in finals} == {
        (m, k, s) for m in cfg.methods for k in cfg.ks for s in cfg.seeds}
    assert all(r["validation"] is not None for r in runs if r["stage"] == "sweep")
    # every (method, K) has its selection, a summary row over every seed
    assert len(on_disk["selection"]) == len(cfg.methods) * len(cfg.ks)
    assert all(row["n_seeds"] == len(cfg.seeds) for row in on_disk["summary"])
    md = (out / "results" / "study_tiny.md").read_text()
    assert "| dpo_all | 4 |" in md and "(4) chosen likelihood" in md
    names = ("accuracy_vs_kl", "logps_trajectories", "k2_vs_k4")
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        f"llm_tiny_{n}.{ext}" for n in names for ext in ("png", "json"))
    for name in names:
        png = out / "figures" / f"llm_tiny_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        json.loads((out / "figures" / f"llm_tiny_{name}.json").read_text())


def test_report_stage_alone_rebuilds_results_from_state(tiny_result, tmp_path):
    out, result = tiny_result
    again = run_study("tiny", out=str(out / "work"), stages=["report"], results_dir=str(tmp_path),
                      figures_dir=str(tmp_path / "figs"), progress=False)
    assert again["summary"] == result["summary"]
    assert (tmp_path / "study_tiny.json").is_file()


def test_fresh_study_refuses_non_empty_out(tiny_result):
    out, _ = tiny_result
    with pytest.raises(ValueError, match="not empty"):
        run_study("tiny", out=str(out / "work"), progress=False)


# ------------------------------------------------------------------------------------------ pieces


def _sweep_record(reward, accuracy, kl):
    return {"validation": {"reward": reward, "accuracy": accuracy, "kl": kl}}


def test_select_best_by_reward_then_accuracy_then_kl_then_order():
    a, b, c, d = (_sweep_record(0.5, 0.2, 1.0), _sweep_record(0.6, 0.1, 3.0), _sweep_record(0.6, 0.3, 2.0),
                  _sweep_record(0.6, 0.3, 1.5))
    assert select_best([a, b, c, d]) is d
    assert select_best([a, b, c, d], "accuracy") is d
    assert select_best([a, b]) is b
    assert select_best([a, b], "accuracy") is a
    twin = _sweep_record(0.6, 0.3, 1.5)
    assert select_best([d, twin]) is d  # full tie: the earlier grid point
    with pytest.raises(ValueError, match="candidates"):
        select_best([])
    with pytest.raises(ValueError, match="metric"):
        select_best([a], "kl")


def _final(method, k, seed, accuracy, reward=0.5, kl=1.0, best=0.1):
    return {"method": method, "k": k, "seed": seed, "beta": 0.1, "alpha": None, "setting": {"beta": 0.1},
            "accuracy": accuracy, "reward": reward, "kl": kl, "logp_best_change": best, "logp_worst_change": -best,
            "test": {}}


def test_summarise_mean_and_sample_std_over_seeds():
    recs = [_final("nca", 4, s, acc) for s, acc in enumerate((0.1, 0.2, 0.6))]
    recs.append({**_final("nca", 4, 9, 0.9), "test": None})  # a sweep-only record: not a final run
    (row,) = summarise(recs)
    assert row["n_seeds"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["accuracy"]["mean"] == pytest.approx(0.3)
    # sample std (n - 1): deviations -0.2, -0.1, 0.3 -> sqrt(0.14 / 2)
    assert row["accuracy"]["std"] == pytest.approx(math.sqrt(0.07))


def test_compare_verdicts_use_two_standard_errors():
    def row(values):
        return {"accuracy": {"mean": sum(values) / len(values), "std": std(values), "n": len(values)}}

    clear = compare(row([0.5, 0.52, 0.54]), row([0.1, 0.12, 0.14]), "accuracy")
    assert clear["verdict"] == "higher" and clear["delta"] == pytest.approx(0.4)
    assert clear["se"] == pytest.approx(math.sqrt(2 * 0.02 ** 2 / 3))
    assert compare(row([0.1, 0.12, 0.14]), row([0.5, 0.52, 0.54]), "accuracy")["verdict"] == "lower"
    assert compare(row([0.1, 0.5, 0.3]), row([0.2, 0.4, 0.35]), "accuracy")["verdict"] == "not separated"
    assert compare(row([0.1]), row([0.2, 0.3]), "accuracy")["verdict"] == "n < 2"


def test_claims_pick_the_right_pairs():
    recs = []
    for s in range(3):
        recs += [_final("nca", 4, s, 0.5 + 0.01 * s, best=0.5), _final("dpo", 4, s, 0.1 + 0.01 * s, best=-2.0),
                 _final("nca", 2, s, 0.3 + 0.01 * s, best=0.4), _final("dpo", 2, s, 0.2 + 0.01 * s, best=-1.0)]
    out = claims(summarise(recs), {"accuracy": 0.2, "reward": 0.5})
    c1 = {(e["a"], e["b"], e["metric"]): e for e in out["1_reward_data"]}
    assert c1["nca K=4", "dpo K=4", "accuracy"]["verdict"] == "higher"
    c2 = {(e["a"], e["metric"]): e for e in out["2_suboptimal_responses"]}
    assert c2["nca K=4", "accuracy"]["delta"] == pytest.approx(0.2)
    c3 = {(e["a"], e["b"], e["metric"]): e for e in out["3_reasoning"]}
    assert c3["dpo K=4", "μ", "accuracy"]["verdict"] == "lower"
    assert c3["nca K=4", "μ", "accuracy"]["verdict"] == "higher"
    c4 = {e["a"]: e for e in out["4_chosen_likelihood"] if "b" not in e}
    c4_vs_dpo = {(e["a"], e["b"]): e for e in out["4_chosen_likelihood"] if "b" in e}
    assert c4_vs_dpo["nca K=4", "dpo K=4"]["delta"] == pytest.approx(2.5)
    # the logp changes are identical across seeds: std 0, so any nonzero mean is separated from 0
    assert c4["nca K=4"]["verdict"] == "rises" and c4["dpo K=4"]["verdict"] == "falls"


def test_grid_settings_include_fixed_hyperparameters_and_every_point():
    points = grid_settings("nca", {"beta": [0.1, 0.3], "alpha": [0.5, 1.0]})
    assert points == [{"beta": 0.1, "alpha": 0.5}, {"beta": 0.1, "alpha": 1.0},
                      {"beta": 0.3, "alpha": 0.5}, {"beta": 0.3, "alpha": 1.0}]
    assert grid_settings("dpo_all", {"beta": [0.1]}) == [{"pairs": "all", "beta": 0.1}]
    assert grid_settings("clha", {"margin": [0.3]}) == [{"min_gap": 0.0, "margin": 0.3}]


@pytest.mark.parametrize("method", list(METHODS))
def test_train_argv_parses_to_the_method_and_setting(method, tmp_path):
    cfg = load_study_config(recipe_path("cpu"))
    setting = grid_settings(method, cfg.grids[method])[0]
    argv = train_argv(model="m", data="d.jsonl", method=method, setting=setting, seed=3,
                            output_dir=str(tmp_path / "o"), ref_cache_dir=str(tmp_path / "r"), align=cfg.align)
    parsed = config_from_args(argv)
    assert parsed.loss == METHODS[method].loss and parsed.seed == 3
    for name, value in setting.items():
        assert getattr(parsed, name) == value
    for name, value in cfg.align.items():
        assert getattr(parsed, name) == value


@pytest.mark.parametrize("scale", ["tiny", "cpu", "gpu"])
def test_recipes_load_and_cover_every_method(scale):
    cfg = load_study_config(recipe_path(scale))
    assert cfg.scale == scale
    if scale != "tiny":
        assert set(cfg.methods) == set(METHODS) and cfg.ks == [2, 4] and len(cfg.seeds) >= 3


def test_bad_recipe_is_a_value_error_naming_the_key(tmp_path):
    good = (recipe_path("tiny")).read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.replace("  max_steps: 2", "  max_steps: 2\n  loss: dpo"))
    with pytest.raises(ValueError, match="align: unknown key 'loss'"):
        load_study_config(bad)
    bad.write_text(good.replace("methods: [dpo,", "methods: [kto, dpo,"))
    with pytest.raises(ValueError, match="unknown method 'kto'"):
        load_study_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_study_config(tmp_path / "missing.yaml")


def test_resume_completes_what_a_time_budget_skipped(tiny_result, tmp_path):
    # A copy of the tiny study in which the seed-1 runs lost their test evaluation to the time budget: --resume
    # evaluates exactly those (no retraining) and the skipped list then names nothing.
    import shutil

    out, result = tiny_result
    work = tmp_path / "work"
    shutil.copytree(out / "work", work)
    state_path = work / "state.json"
    state = json.loads(state_path.read_text().replace(str(out / "work"), str(work)))
    dropped = []
    for rec in state["runs"]:
        if rec["seed"] == 1:
            rec.update(test=None, accuracy=None, reward=None, kl=None)
            dropped.append(rec["run_id"])
    state["skipped"] = [f"seeds: {rid} (time budget)" for rid in dropped]
    state_path.write_text(json.dumps(state))
    resumed = run_study("tiny", out=str(work), stages=["seeds", "report"], resume=True,
                        results_dir=str(tmp_path), figures_dir=str(tmp_path / "figs"), progress=False)
    assert resumed["skipped"] == []
    by_id = {r["run_id"]: r for r in resumed["runs"]}
    before = {r["run_id"]: r for r in result["runs"]}
    for rid in dropped:
        assert by_id[rid]["test"] is not None
        # same weights, same evaluation seed: the same numbers as before
        assert by_id[rid]["accuracy"] == before[rid]["accuracy"] and by_id[rid]["kl"] == pytest.approx(before[rid]["kl"])


def test_prepare_out_dir_refuses_a_non_empty_folder_and_deletes_only_a_study(tmp_path):
    from nca_lab.llm.study.pipeline import prepare_out_dir

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not empty"):
        prepare_out_dir(other, fresh=True, overwrite=False)
    with pytest.raises(ValueError, match="holds no study"):
        prepare_out_dir(other, fresh=True, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
    prepare_out_dir(other, fresh=False, overwrite=False)  # continuing a study keeps the folder as it is
    assert (other / "notes.txt").is_file()
    study = tmp_path / "study"
    study.mkdir()
    (study / "state.json").write_text("{}")
    prepare_out_dir(study, fresh=True, overwrite=True)
    assert study.is_dir() and not any(study.iterdir())
