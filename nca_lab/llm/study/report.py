"""The study's report: the four claims, each with the comparisons that test it, and the Markdown summary
(``study_<scale>.md``) of a result."""

from __future__ import annotations

import math
from collections.abc import Sequence

from nca_lab.llm.study.recipe import METHODS, setting_id
from nca_lab.llm.study.stats import compare

__all__ = ["claims", "markdown_report"]


def _fmt(stat: dict, digits: int = 3) -> str:
    if stat is None or stat.get("n", 0) == 0 or stat["mean"] is None or math.isnan(stat["mean"]):
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _num(x, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def claims(summary: Sequence[dict], base_eval: dict | None) -> dict:
    """The four claims, each with the comparisons that test it (numbers and verdicts).

    (1) reward data helps: InfoNCA / NCA on the K scored responses vs DPO on the binarised pair (best vs worst)
        and vs DPO over all pairs, same K, on test accuracy and mean sampled reward;
    (2) suboptimal responses help: K = 4 vs K = 2 for every method;
    (3) NCA vs DPO on the reasoning task, each relative to μ (does DPO fall below μ, does NCA?);
    (4) chosen likelihood: the change of log π(best) on training prompts for NCA / pairwise NCA vs DPO."""
    by = {(r["method"], r["k"]): r for r in summary}
    out: dict[str, list[dict]] = {"1_reward_data": [], "2_suboptimal_responses": [], "3_reasoning": [],
                                  "4_chosen_likelihood": []}
    for k in (4, 2):
        for ours in ("infonca", "nca"):
            for theirs in ("dpo", "dpo_all"):
                if (ours, k) in by and (theirs, k) in by:
                    for metric in ("accuracy", "reward"):
                        out["1_reward_data"].append({"a": f"{ours} K={k}", "b": f"{theirs} K={k}", "metric": metric,
                                                     **compare(by[ours, k], by[theirs, k], metric)})
    for method in METHODS:
        if (method, 4) in by and (method, 2) in by:
            for metric in ("accuracy", "reward"):
                out["2_suboptimal_responses"].append({"a": f"{method} K=4", "b": f"{method} K=2", "metric": metric,
                                                      **compare(by[method, 4], by[method, 2], metric)})
    for k in (4, 2):
        for method in ("dpo", "dpo_all", "nca", "nca_pair", "infonca"):
            if (method, k) in by and base_eval is not None:
                s = by[method, k]
                for metric in ("accuracy", "reward"):
                    st = s[metric]
                    delta = st["mean"] - base_eval[metric]
                    se = st["std"] / math.sqrt(st["n"]) if st["n"] >= 2 else None
                    verdict = ("n < 2" if se is None else "higher" if delta > 2 * se and delta > 0 else
                               "lower" if delta < -2 * se and delta < 0 else "not separated")
                    out["3_reasoning"].append({"a": f"{method} K={k}", "b": "μ", "metric": metric, "delta": delta,
                                               "se": se, "verdict": verdict})
        if ("nca", k) in by and ("dpo", k) in by:
            for metric in ("accuracy", "reward"):
                out["3_reasoning"].append({"a": f"nca K={k}", "b": f"dpo K={k}", "metric": metric,
                                           **compare(by["nca", k], by["dpo", k], metric)})
    for k in (4, 2):
        for method in ("nca", "nca_pair", "infonca", "dpo", "dpo_all", "ipo", "clha"):
            if (method, k) in by:
                st = by[method, k]["logp_best_change"]
                if st["n"] == 0:
                    continue
                se = st["std"] / math.sqrt(st["n"]) if st["n"] >= 2 else None
                verdict = ("n < 2" if se is None else "rises" if st["mean"] > 2 * se and st["mean"] > 0 else
                           "falls" if st["mean"] < -2 * se and st["mean"] < 0 else "not separated from 0")
                out["4_chosen_likelihood"].append({"a": f"{method} K={k}", "metric": "logp_best_change",
                                                   "mean": st["mean"], "std": st["std"], "n": st["n"], "se": se,
                                                   "verdict": verdict})
        for ours in ("nca", "nca_pair"):
            if (ours, k) in by and ("dpo", k) in by and by[ours, k]["logp_best_change"]["n"] and \
                    by["dpo", k]["logp_best_change"]["n"]:
                out["4_chosen_likelihood"].append({"a": f"{ours} K={k}", "b": f"dpo K={k}", "metric": "logp_best_change",
                                                   **compare(by[ours, k], by["dpo", k], "logp_best_change")})
    return out


def markdown_report(result: dict) -> str:
    """The study's Markdown summary: setup, μ, data, the summary table and the claim-by-claim comparisons."""
    lines = [f"# Verifiable-reasoning study — scale `{result['scale']}` ({result['device']})", ""]
    later = [c for c in result.get("commands", [])[1:] if c]
    lines += [f"Command: `{result['command']}`" + (f" (then: {', '.join(f'`{c}`' for c in later)})" if later else "")
              + "  ", f"Versions: " + ", ".join(f"{k} {v}" for k, v in
                                                                          result["versions"].items()) + "  ",
              f"Wall time: {result['timings'].get('total_s', float('nan')):.0f} s "
              f"(stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["timings"].items()
                                       if k != "total_s") + ")", ""]
    base = result.get("base_policy") or {}
    if base:
        t = base.get("test", {})
        lines += [f"μ: Llama `{base.get('size')}` ({base.get('n_params')} parameters), {base.get('steps_done')} steps "
                  f"on demonstrations with error rate {base.get('error_rate')}; test: greedy accuracy "
                  f"{_num(t.get('accuracy'))}, mean sampled reward {_num(t.get('reward'))}.", ""]
    for name, stats in (result.get("data") or {}).items():
        lines.append(f"Data `{name}`: {stats['rows_with_2_or_more_responses']} prompts, mean reward "
                     f"{_num(stats['mean_reward'])}, best {_num(stats['mean_best_reward'])}, worst "
                     f"{_num(stats['mean_worst_reward'])}, prompts with a reward spread "
                     f"{_num(stats['fraction_rows_with_reward_spread'], 2)}.")
    lines.append("")
    if result.get("skipped"):
        lines += ["Skipped (time budget): " + "; ".join(result["skipped"]), ""]
    lines += ["## Test split, chosen setting, mean ± std over seeds", "",
              "| method | K | setting | seeds | accuracy | reward | KL(π‖μ) | Δ log π(best) | Δ log π(worst) |",
              "|---|---|---|---|---|---|---|---|---|"]
    if base:
        t = base.get("test", {})
        lines.append(f"| μ | – | – | – | {_num(t.get('accuracy'))} | {_num(t.get('reward'))} | 0 | 0 | 0 |")
    for row in result.get("summary", []):
        lines.append(f"| {row['method']} | {row['k']} | {setting_id(row['setting'])} | {row['n_seeds']} | "
                     f"{_fmt(row['accuracy'])} | {_fmt(row['reward'])} | {_fmt(row['kl'], 2)} | "
                     f"{_fmt(row['logp_best_change'], 2)} | {_fmt(row['logp_worst_change'], 2)} |")
    lines += ["", "## Claims (Δ = difference of means; verdict 'higher'/'lower' when |Δ| > 2 SE over seeds)", ""]
    titles = {"1_reward_data": "(1) reward data helps: InfoNCA/NCA on K scored responses vs DPO",
              "2_suboptimal_responses": "(2) suboptimal responses help: K = 4 vs K = 2",
              "3_reasoning": "(3) reasoning: aligned policy vs μ, and NCA vs DPO",
              "4_chosen_likelihood": "(4) chosen likelihood: Δ log π(best response) on training prompts"}
    for key, title in titles.items():
        lines += [f"### {title}", ""]
        entries = result.get("claims", {}).get(key, [])
        if not entries:
            lines += ["(no runs to compare)", ""]
            continue
        for e in entries:
            if "delta" not in e:
                lines.append(f"- {e['a']}: {e['mean']:+.2f} ± {e['std']:.2f} nats (n = {e['n']}) → {e['verdict']}")
            else:
                se = "" if e["se"] is None else f" (SE {e['se']:.3f})"
                metric = "Δ log π(best)" if e["metric"] == "logp_best_change" else e["metric"]
                lines.append(f"- {metric}: {e['a']} − {e['b']} = {e['delta']:+.3f}{se} → {e['verdict']}")
        lines.append("")
    return "\n".join(lines) + "\n"
