"""The v2 study (nca_lab.llm.study, ``version: 2`` recipes): the tiny_v2 pipeline end to end with two cuts and
resumes and a report on the partial state; the matched-KL interpolation, Holm's adjustment, the recipe checks and
the cpu_v2 recipe's regime."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from nca_lab.llm.study.pipeline import run_study
from nca_lab.llm.study.recipe import recipe_path
from nca_lab.llm.study.recipe_v2 import final_units, load_v2_config, run_steps
from nca_lab.llm.study.report_v2 import holm, interpolate_path
from nca_lab.llm.study.stages_v2 import sample_keys


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    """tiny_v2 cut after 4 units, report on the partial state, cut again after 10 more, then resumed to the end."""
    out = tmp_path_factory.mktemp("study_tiny_v2")
    kw = dict(config=str(recipe_path("tiny_v2")), out=str(out / "work"), results_dir=str(out / "results"),
              figures_dir=str(out / "figures"), progress=False)
    first = run_study(**kw, stop_after_units=4)
    before = (out / "work" / "state.json").read_text()
    partial = run_study(**kw, stages=["report"], resume=True)
    assert (out / "work" / "state.json").read_text() == before  # the report reads the state, never writes it
    second = run_study(**kw, resume=True, stop_after_units=10)
    final = run_study(**kw, resume=True)
    return out, first, partial, second, final


def test_cut_and_resume_finish_every_unit_once(tiny_v2):
    out, first, partial, second, final = tiny_v2
    cfg = load_v2_config(recipe_path("tiny_v2"))
    assert first["stopped"] == "base: stop_after_units=4" or first["stopped"].endswith("stop_after_units=4")
    assert second["stopped"].endswith("stop_after_units=10")
    assert final["stopped"] is None and final["pending"] == []
    state = json.loads((out / "work" / "state.json").read_text())
    names = [u["name"] for u in state["unit_log"]]
    assert len(names) == len(set(names)), Counter(names).most_common(3)  # no unit was done twice
    assert all(u["wall_s"] >= 0 and u["cpu_s"] >= 0 for u in state["unit_log"])
    assert len(state["commands"]) == 3  # the report-only invocation left the state alone
    # every μ, every sample set (one per final seed and μ, plus the sweep's), every final run and checkpoint
    assert sorted(state["mus"]) == [str(m) for m in cfg.mu_seeds]
    assert sorted(state["samples"]) == sorted(f"mu{m}_s{s}" for m, s in sample_keys(cfg))
    finals = [r for r in state["runs"] if r["stage"] == "final"]
    assert sorted((r["method"], r["k"], r["mu_seed"], r["seed"]) for r in finals) == sorted(final_units(cfg))
    steps = run_steps(cfg)
    for r in finals:
        assert sorted(int(s) for s in r["checkpoint_evals"]) == [steps // 2, steps]
        assert r["test"]["step"] == steps and len(r["test"]["per_prompt"]["correct"]) == cfg.eval["n_test"]
        for ev in r["checkpoint_evals"].values():
            assert len(ev["per_prompt"]["reward"]) == cfg.eval["n_test"]
        # each seed trained on its own samples, with its own seed
        assert f"s{r['seed']}_k{r['k']}.jsonl" in r["train_command"] and f"--seed {r['seed']}" in r["train_command"]
    # no sweep run is a final run: the sweep seed is not a final seed
    sweeps = [r for r in state["runs"] if r["stage"] == "sweep"]
    assert {r["seed"] for r in sweeps} == {cfg.sweep["seed"]} and cfg.sweep["seed"] not in cfg.seeds
    assert all(len(r["validation"]["per_prompt"]["id"]) == cfg.eval["n_validation"] for r in sweeps)
    for m in state["mus"].values():
        assert len(m["test"]["per_prompt"]["correct"]) == cfg.eval["n_test"] and "learnable_not_solved" in m[
            "learnability"]


def test_sweep_extends_a_grid_whose_choice_is_on_an_edge(tiny_v2):
    out, *_, final = tiny_v2
    sel = final["selection"]
    lr_log = next(e for e in sel["nca_k4"]["coordinate_log"] if e["param"] == "lr")
    assert len(lr_log["values"]) == 3 and lr_log["extensions"] == 1  # [1e-3, 3e-3] + one geometric step
    assert set(lr_log["values"]) >= {1e-3, 3e-3}
    assert sel["nca_k2"]["inherited_from"] == "nca_k4"


def test_partial_report_lists_pending_units(tiny_v2):
    out, first, partial, *_ = tiny_v2
    assert partial["pending"] and any(p.startswith("final") for p in partial["pending"])
    assert partial["final"] == [] and "matched_kl" in partial
    assert "remaining_wall_s_estimate" in partial["timing"]


def test_report_files_and_matched_kl_fields(tiny_v2):
    out, *_, final = tiny_v2
    on_disk = json.loads((out / "results" / "study_tiny_v2.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    md = (out / "results" / "study_tiny_v2.md").read_text()
    assert "## Matched KL" in md and "## Pending (0)" in md and "p_holm" in md
    assert {"final", "paths", "matched_kl", "comparisons", "pending", "timing"} <= set(on_disk)
    for row in on_disk["matched_kl"]:
        assert {"k", "mu_seed", "kl_target", "fraction"} <= set(row) and row["reading"] in ("first", "best")
        assert ("method" in row and {"reward", "accuracy", "n_seeds"} <= set(row)) or \
               ("comparison" in row and {"mean", "lo", "hi", "p_two_sided"} <= set(row))
    assert any(" K=4 − " in r.get("comparison", "") for r in on_disk["matched_kl"]) or not any(
        "method" in r for r in on_disk["matched_kl"])  # K = 4 vs K = 2 at matched KL whenever paths moved
    assert all("p_holm" in c for c in on_disk["comparisons"])
    for name in ("paths", "logp_best"):
        assert (out / "figures" / f"llm_tiny_v2_{name}.png").is_file()
    # the matched-KL figure exists exactly when some path on the first μ left μ: a tiny μ whose K samples all tie
    # in reward gives every run a zero gradient (KL 0 throughout), and then there is nothing to match
    moved = any("method" in r and r["mu_seed"] == 0 for r in on_disk["matched_kl"])
    assert (out / "figures" / "llm_tiny_v2_matched_kl.png").is_file() == moved
    path = next(p for p in on_disk["paths"] if p["method"] == "nca" and p["k"] == 4 and p["mu_seed"] == 0)
    assert path["step"][0] == 0 and path["kl"][0] == 0.0 and len(path["step"]) == 3
    # every sweep run is listed (tuning runs: exploratory), with its end-of-training log-ratios from its trajectory
    state = json.loads((out / "work" / "state.json").read_text())
    sweeps = {r["run_id"]: r for r in state["runs"] if r["stage"] == "sweep"}
    assert sorted(r["run_id"] for r in on_disk["sweep_runs"]) == sorted(sweeps)
    for row in on_disk["sweep_runs"]:
        best = [x for x in sweeps[row["run_id"]]["trajectory"]["logratio/best"][-4:] if x is not None]
        assert row["train_logratio_best_end"] == pytest.approx(sum(best) / len(best)) if best else \
            row["train_logratio_best_end"] is None
        assert row["reward"] == sweeps[row["run_id"]]["validation"]["reward"]
    sweep_table = md[md.index("### Sweep runs so far"):md.index("## Final runs")]
    assert sweep_table.count("| nca | 4 | lr ") + sweep_table.count("| dpo | 4 | lr ") == len(sweeps)


def test_interpolate_path_in_kl():
    pts = [{"step": 0, "kl": 0.0, "accuracy": 0.5, "reward": 0.4, "correct": np.array([0.0, 1.0]),
            "prompt_reward": np.array([0.2, 0.6])},
           {"step": 10, "kl": 2.0, "accuracy": 0.7, "reward": 0.6, "correct": np.array([1.0, 1.0]),
            "prompt_reward": np.array([0.4, 0.8])}]
    at, correct, reward = interpolate_path(list(reversed(pts)), 0.5)  # read in step order, whatever the list order
    assert at["accuracy"] == pytest.approx(0.55) and at["reward"] == pytest.approx(0.45)
    assert correct.tolist() == pytest.approx([0.25, 1.0]) and reward.tolist() == pytest.approx([0.25, 0.65])
    assert interpolate_path(pts, 2.5) is None
    assert interpolate_path(pts, 2.0)[0]["reward"] == pytest.approx(0.6)  # the end point itself is on the path


def test_interpolate_path_reads_a_non_monotone_path_where_it_first_reaches_the_kl():
    """KL rises to 2 at step 10 and falls to 1 at step 20 (as NCA's does in the cpu_v2 study): KL 1 is first reached
    halfway to step 10 (reward 0.5), not at step 20 (reward 0.9), and KL 1.5 between steps 0 and 10 — re-sorting
    the points by KL would instead join step 20 to step 10."""
    def point(step, kl, reward):
        return {"step": step, "kl": kl, "accuracy": reward, "reward": reward, "correct": np.array([reward]),
                "prompt_reward": np.array([reward])}

    pts = [point(20, 1.0, 0.9), point(0, 0.0, 0.4), point(10, 2.0, 0.6)]
    assert interpolate_path(pts, 1.0)[0]["reward"] == pytest.approx(0.5)
    assert interpolate_path(pts, 1.5)[0]["reward"] == pytest.approx(0.55)
    assert interpolate_path(pts, 2.0 + 1e-9) is None
    # the frontier reading: the best of the crossings (KL 1 is crossed on both segments; 1.5 also on both)
    at, correct, _ = interpolate_path(pts, 1.0, "best")
    assert at["reward"] == pytest.approx(0.9) and correct.tolist() == pytest.approx([0.9])
    assert interpolate_path(pts, 1.5, "best")[0]["reward"] == pytest.approx(0.75)
    assert interpolate_path(pts, 2.0 + 1e-9, "best") is None
    with pytest.raises(ValueError, match="reading: expected 'first' or 'best'"):
        interpolate_path(pts, 1.0, "last")


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_recipe_rejects_a_sweep_seed_among_final_seeds(tmp_path):
    text = recipe_path("tiny_v2").read_text().replace("seeds: [1, 2]", "seeds: [0, 1]")
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match="sweep.seed 0 is a final seed"):
        load_v2_config(tmp_path / "bad.yaml")


def test_cpu_v2_recipe_regime():
    cfg = load_v2_config(recipe_path("cpu_v2"))
    assert cfg.level == "multi" and cfg.base["size"] == "small"
    assert cfg.data["n_prompts"] >= 2048 and cfg.align["epochs"] == 3 and run_steps(cfg) == 768
    assert cfg.eval["n_test"] >= 1000 and len(cfg.seeds) >= 5 and len(cfg.mu_seeds) == 2
    assert cfg.sweep["seed"] not in cfg.seeds and cfg.n_checkpoints == 4
    assert cfg.results == {"dir": "llm/results", "name": "study_cpu_v2", "figures_dir": "figures",
                           "figures_prefix": "llm_cpu_v2"}
    for grid in cfg.grids.values():
        assert all(len(v) >= 3 for v in grid.values())  # the middle value starts the search, not an edge


def test_the_seeds_stage_alone_inherits_the_swept_choice_for_the_other_k():
    """A process started with --stages seeds after the sweep finished runs the K without a sweep of its own."""
    from types import SimpleNamespace

    from nca_lab.llm.study.stages_v2 import _inherit_selections

    cfg = load_v2_config(recipe_path("cpu_v2"))
    chosen = {"setting": {"lr": 1e-4, "beta": 0.3, "alpha": 0.3}, "complete": True}
    study = SimpleNamespace(cfg=cfg, methods=["nca", "dpo"],
                            state={"selection": {"nca_k4": chosen, "dpo_k4": {"setting": {}, "complete": False}}})
    _inherit_selections(study)
    assert study.state["selection"]["nca_k2"] == {**chosen, "inherited_from": "nca_k4"}
    assert "dpo_k2" not in study.state["selection"]  # an unfinished sweep passes nothing on


def test_a_diverged_run_is_recorded_and_never_chosen(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import nca_lab.llm.study.stages_v2 as st
    from nca_lab.llm.study.stats import select_best
    from nca_lab.llm.train import TrainingDiverged

    def diverge(*args, **kwargs):
        raise TrainingDiverged("training diverged: loss is NaN at step 3")

    monkeypatch.setattr(st, "_train", diverge)
    study = SimpleNamespace(out=tmp_path, state={"device": "cpu"})
    rec = st._train_or_diverged(study, "dpo", 4, {"lr": 1e-2, "beta": 1.0}, 0, 100, "sweep", False)
    assert rec["run_id"] == "dpo_k4_lr0.01_beta1_mu0_seed100" and "NaN" in rec["diverged"]
    good = {"setting": {"lr": 1e-4}, "validation": {"accuracy": 0.0, "reward": 0.0, "kl": 50.0}}
    bad = {"setting": {"lr": 1e-2}, "validation": dict(st.DIVERGED_VALIDATION)}
    assert select_best([bad, good])["setting"] == {"lr": 1e-4}


def test_time_budget_stops_between_units_and_the_report_lists_the_rest(tmp_path):
    kw = dict(config=str(recipe_path("tiny_v2")), out=str(tmp_path / "work"), results_dir=str(tmp_path / "res"),
              figures_dir=str(tmp_path / "fig"), progress=False)
    result = run_study(**kw, time_budget_s=1e-3)
    assert result["stopped"] == "base: time budget" and result["mus"] == {}
    assert "mu0" in result["pending"] and (tmp_path / "res" / "study_tiny_v2.md").is_file()


def test_merge_states_keeps_the_more_advanced_copy():
    """Two processes' views of one state: each run, selection and logged unit survives the merge, and of two
    copies of the same run the one with more evaluations wins, whichever side holds it."""
    from nca_lab.llm.study.shared_state import merge_states

    def run(rid, evals, test=None):
        return {"run_id": rid, "validation": None, "test": test, "checkpoint_evals": {str(s): {} for s in evals}}

    disk = {"runs": [run("a", [1, 2]), run("b", [])], "selection": {"nca_k4": {"complete": True, "x": 1}},
            "unit_log": [{"kind": "k", "name": "a@1", "finished_at": "2026-01-01T00:00:01"}],
            "commands": ["c0", "c1"], "timings": {"sweep_wall_s": 50.0}, "samples": {"s1": 1}, "mus": {"0": 1}}
    mine = {"runs": [run("a", [1]), run("b", [1, 2], test={"x": 1}), run("c", [])],
            "selection": {"nca_k4": {"complete": False}, "dpo_k4": {"complete": True}},
            "unit_log": [{"kind": "k", "name": "b@2", "finished_at": "2026-01-01T00:00:00"}],
            "commands": ["c0", "c1", "c1"], "timings": {"sweep_wall_s": 20.0, "seeds_wall_s": 5.0}, "samples": {"s2": 2},
            "mus": {"0": 1}, "stopped": None, "stopped_by": {"t pid 7": "sweep: time budget"}}
    # this process had 10 s of sweep when it last synced; the file has 50 s since (another process added 40)
    m = merge_states(disk, mine, synced_timings={"sweep_wall_s": 10.0})
    by_id = {r["run_id"]: r for r in m["runs"]}
    assert sorted(by_id) == ["a", "b", "c"]
    assert list(by_id["a"]["checkpoint_evals"]) == ["1", "2"]  # the file's copy was further along
    assert by_id["b"]["test"] == {"x": 1}  # this process's copy was further along
    assert m["selection"] == {"nca_k4": {"complete": True, "x": 1}, "dpo_k4": {"complete": True}}
    assert [u["name"] for u in m["unit_log"]] == ["b@2", "a@1"]  # in order of finishing
    assert m["commands"] == ["c0", "c1", "c1"] and m["samples"] == {"s1": 1, "s2": 2}
    assert merge_states({"commands": ["c0", "a"]}, {"commands": ["c0", "b"]})["commands"] == ["c0", "a", "b"]
    assert m["timings"] == {"sweep_wall_s": 60.0, "seeds_wall_s": 5.0}  # each process's seconds counted once
    assert m["stopped"] is None and m["stopped_by"] == {"t pid 7": "sweep: time budget"}


def test_two_workers_give_the_sequential_study(tiny_v2, tmp_path, capsys):
    """``--workers 2``: the shared stages in-process, then one child process per method group (``nca`` | ``dpo``)
    at the same time on the same --out, then the report: every unit is done exactly once, and every run's numbers
    and every selection equal those of the single-process study of the fixture (same seeds: CPU training with
    one thread is deterministic)."""
    from nca_lab.llm.study.pipeline import main

    work = tmp_path / "work"
    assert main(["--config", str(recipe_path("tiny_v2")), "--out", str(work), "--workers", "2", "--results-dir",
                 str(tmp_path / "res"), "--figures-dir", str(tmp_path / "fig")]) == 0
    assert "2 workers: nca | dpo" in capsys.readouterr().out
    state = json.loads((work / "state.json").read_text())
    sequential_state = json.loads((tiny_v2[0] / "work" / "state.json").read_text())
    # every unit once (the merge would hide a unit done twice, so count against the sequential study's log)
    assert sorted(u["name"] for u in state["unit_log"]) == sorted(u["name"] for u in sequential_state["unit_log"])
    assert state["stopped"] is None
    # each stage's seconds counted once: the base stage is its μ units (the parent's final merge once doubled them)
    mu_s = sum(u["wall_s"] for u in state["unit_log"] if u["kind"] == "mu")
    assert mu_s - 0.1 <= state["timings"]["base_wall_s"] <= 1.2 * mu_s + 1.0, (state["timings"], mu_s)  # 0.1: rounding
    sequential = {r["run_id"]: r for r in sequential_state["runs"]}
    parallel = {r["run_id"]: r for r in state["runs"]}
    assert sorted(parallel) == sorted(sequential)
    for rid, r in parallel.items():
        assert (r["accuracy"], r["reward"], r["kl"]) == (sequential[rid]["accuracy"], sequential[rid]["reward"],
                                                         sequential[rid]["kl"]), rid
    assert state["selection"] == sequential_state["selection"]
    report = json.loads((tmp_path / "res" / "study_tiny_v2.json").read_text())
    assert report["pending"] == [] and {w for c in state["commands"] for w in c.split() if w in ("nca", "dpo")} == \
        {"nca", "dpo"}  # each worker recorded its own command line
    # a second process for a method that is being trained on this study is refused (no run done twice)
    import contextlib

    from nca_lab.llm.study.shared_state import lock_methods

    with contextlib.ExitStack() as held:
        lock_methods(work, ["nca"], held)
        assert main(["--config", str(recipe_path("tiny_v2")), "--out", str(work), "--resume", "--stages", "sweep",
                     "--methods", "nca"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: methods: nca is being trained by another process")


def test_method_groups_balance_the_final_runs():
    from nca_lab.llm.study.workers import method_groups

    cfg = load_v2_config(recipe_path("cpu_v2"))  # nca and dpo (headline) have 20 final runs each, the others 10
    assert method_groups(cfg, 2) == [["nca", "infonca", "nca_pair"], ["dpo", "dpo_all"]]
    assert method_groups(cfg, 1) == [cfg.methods]
    assert sorted(m for g in method_groups(cfg, 8) for m in g) == sorted(cfg.methods)  # at most one per method


def test_methods_option_refuses_what_it_cannot_do(tmp_path, capsys):
    from nca_lab.llm.study.pipeline import main

    cfg = str(recipe_path("tiny_v2"))
    assert main(["--config", cfg, "--out", str(tmp_path / "w"), "--methods", "ipo"]) == 2
    assert capsys.readouterr().err.strip() == "error: methods: ipo is not a method of the recipe; its methods: nca, dpo"
    assert main(["--config", cfg, "--out", str(tmp_path / "w"), "--methods", "nca"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: methods: a process for some methods runs only the sweep, seeds and report stages")
    assert main(["--config", cfg, "--out", str(tmp_path / "w"), "--resume", "--stages", "sweep", "--methods",
                 "nca"]) == 2
    assert "state.json missing" in capsys.readouterr().err
    assert main(["--scale", "tiny", "--out", str(tmp_path / "v1"), "--methods", "nca"]) == 2
    assert capsys.readouterr().err.strip() == "error: methods: only v2 recipes (version: 2) split their methods over processes"
    assert main(["--scale", "tiny", "--out", str(tmp_path / "v1"), "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip() == "error: workers: only v2 recipes (version: 2) split their methods over processes"
    with pytest.raises(SystemExit) as e:  # argparse: a usage line, exit 2
        main(["--config", cfg, "--out", str(tmp_path / "w"), "--methods"])
    assert e.value.code == 2 and "--methods: expected at least one argument" in capsys.readouterr().err
    assert main(["--config", cfg, "--out", str(tmp_path / "w"), "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: workers: expected an integer >= 1, got 0"
    assert main(["--config", cfg, "--out", str(tmp_path / "w"), "--workers", "2", "--methods", "nca"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: workers: splits every method over processes itself")


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (Linux /proc)."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        pids.append(int(d))
            except OSError:  # the process ended while we looked
                pass
    return pids


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="reads /proc to find the children")
def test_terminating_the_workers_parent_terminates_its_children(tmp_path):
    """SIGTERM to a ``--workers 2`` study (what a scheduler or ``kill`` sends) must not leave its children training
    on their own: the parent exits with 143 and no process of the study remains."""
    import signal
    import subprocess
    import sys
    import time

    work = tmp_path / "work"
    parent = subprocess.Popen([sys.executable, "-m", "nca_lab.llm.study", "--config", str(recipe_path("tiny_v2")),
                               "--out", str(work), "--workers", "2", "--no-progress", "--results-dir",
                               str(tmp_path / "res"), "--figures-dir", str(tmp_path / "fig")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        children: list[int] = []
        while time.monotonic() < deadline and parent.poll() is None:
            children = [p for p in _processes_mentioning(str(work)) if p != parent.pid]
            if len(children) == 2:
                break
            time.sleep(0.5)
        assert len(children) == 2, (parent.poll(), parent.stderr.read() if parent.poll() is not None else "")
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(0.5)  # terminate() was followed by wait(): the children are gone, not merely signalled
        assert _processes_mentioning(str(work)) == []
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in _processes_mentioning(str(work)):
            __import__("os").kill(p, signal.SIGKILL)


def test_figures_draw_only_the_ks_that_have_runs(tiny_v2, tmp_path):
    """A partial study with final runs at K = 4 only draws K = 4's panels: half the height of the full study's
    figures (one row of panels instead of two), with no empty K = 2 row."""
    from PIL import Image

    from nca_lab.llm.study.results_v2 import _figures

    out, *_ = tiny_v2
    rep = json.loads((out / "results" / "study_tiny_v2.json").read_text())
    assert {p["k"] for p in rep["paths"]} == {4, 2}
    k4 = {**rep, "paths": [p for p in rep["paths"] if p["k"] == 4],
          "matched_kl": [r for r in rep["matched_kl"] if r["k"] == 4]}
    files = _figures(k4, load_v2_config(recipe_path("tiny_v2")), tmp_path, "k4")
    moved = any("method" in r and r["mu_seed"] == 0 for r in k4["matched_kl"])  # see the test above
    for name in ("paths", "matched_kl") if moved else ("paths",):
        assert str(tmp_path / f"k4_{name}.png") in [str(f) for f in files]
        full = Image.open(out / "figures" / f"llm_tiny_v2_{name}.png").size
        part = Image.open(tmp_path / f"k4_{name}.png").size
        # (saved with bbox_inches="tight", so the sizes are proportional only roughly)
        assert part[0] == pytest.approx(full[0], rel=0.05) and part[1] < 0.6 * full[1], (name, part, full)
    full = Image.open(out / "figures" / "llm_tiny_v2_logp_best.png").size
    part = Image.open(tmp_path / "k4_logp_best.png").size
    assert part[1] == pytest.approx(full[1], rel=0.05) and part[0] < 0.6 * full[0], (part, full)


def test_displacement_runs_are_trained_evaluated_and_reported(tiny_v2):
    """The recipe's fixed-setting runs: trained and evaluated at every checkpoint like final runs (one record per
    run id, stage ``displacement`` unless it is a final run), reported with Δ log π along training, against μ and
    between methods at the same lr (in ``comparisons``, so Holm's adjustment covers them)."""
    from nca_lab.llm.study.recipe_v2 import displacement_units
    from nca_lab.llm.study.stages_v2 import run_key

    out, *_, final = tiny_v2
    cfg = load_v2_config(recipe_path("tiny_v2"))
    state = json.loads((out / "work" / "state.json").read_text())
    ids = Counter(r["run_id"] for r in state["runs"])
    units = displacement_units(cfg)
    assert [(m, s) for m, _, _, _, s in units] == [("nca", 1), ("dpo", 1)]
    for m, k, setting, mu, s in units:
        rid = run_key(m, k, setting, mu, s)
        assert ids[rid] == 1, rid
        rec = next(r for r in state["runs"] if r["run_id"] == rid)
        assert rec["stage"] in ("displacement", "final") and rec["setting"] == setting
        assert sorted(rec["checkpoint_evals"], key=int) == ["1", "2"] and rec["test"] is not None
    rep = json.loads((out / "results" / "study_tiny_v2.json").read_text())
    rows = {d["method"]: d for d in rep["displacement"]}
    assert set(rows) == {"nca", "dpo"} and all(d["n_seeds"] == 1 and d["label"] == "lr 0.01, beta 0.1"
                                               for d in rows.values())
    dpo_rec = next(r for r in state["runs"] if r["run_id"] == rows["dpo"]["run_ids"][0])
    assert rows["dpo"]["logp_best_change"]["mean"] == dpo_rec["logp_best_change"]
    assert rows["dpo"]["path"]["step"] == [0, 1, 2] and rows["dpo"]["path"]["logp_best_change"][0] == 0.0
    disp = [c for c in rep["comparisons"] if "displacement" in c["a"]]
    assert {(c["b"], c["metric"]) for c in disp} == {("μ0", "accuracy"), ("μ0", "reward"),
                                                     ("dpo K=4 (lr 0.01, beta 0.1; displacement)", "accuracy"),
                                                     ("dpo K=4 (lr 0.01, beta 0.1; displacement)", "reward")} and \
        len(disp) == 6 and all("p_holm" in c for c in disp)
    md = (out / "results" / "study_tiny_v2.md").read_text()
    assert "## Displacement runs" in md and "| dpo | 4 | lr 0.01, beta 0.1 | 1 |" in md


@pytest.mark.parametrize("change, message", [
    ({"seeds": [7]}, "displacement.seeds: expected a non-empty subset of seeds [1, 2]"),
    ({"k": 3}, "displacement.k: 3 is not one of ks [4, 2]"),
    ({"runs": {"ipo": [{"lr": 1.0}]}}, "displacement.runs: 'ipo' is not one of methods"),
    ({"runs": {"nca": [{"lr": 1.0e-2}]}}, "displacement.runs.nca[0]: expected a positive value for each of beta, lr"),
    ({"runs": {"nca": [{"lr": -1.0, "beta": 0.1}]}}, "displacement.runs.nca[0]: expected a positive value"),
    ({"extra": 1}, "displacement"),
])
def test_recipe_checks_the_displacement_runs(tmp_path, change, message):
    import yaml

    raw = yaml.safe_load(recipe_path("tiny_v2").read_text())
    raw["displacement"] = {**raw["displacement"], **change}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError) as e:
        load_v2_config(tmp_path / "bad.yaml")
    assert message in str(e.value) and str(e.value).startswith("recipe bad.yaml: displacement")
