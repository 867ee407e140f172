"""``python -m nca_lab.llm.train --online``: on-policy training with a reward function (nca_lab.llm.online).

Every run samples from the tiny saved Llama (random weights, hidden 32, 2 layers, the tiny BPE tokenizer) on CPU:
a few prompts, K = 3 or 4 samples of at most 8 tokens, a few steps. The rewards come from a small user module
written into a temporary folder and put on ``sys.path`` (in-process runs) or ``PYTHONPATH`` (the CLI run), so
that they vary within a group (the random model almost never satisfies the arithmetic verifier).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from nca_lab.llm.demo import save_demo_model
from nca_lab.llm.train import main

USER_REWARDS = '''
import math

def varied(prompts, responses, rows):
    # depends on the response (so the K rewards of a prompt differ) and on a field of the row
    return [float(len(r) % 3) + rows_i.get("bonus", 0.0) for r, rows_i in zip(responses, rows)]

def constant(prompts, responses, rows):
    return [1.0] * len(responses)

def boom(prompts, responses, rows):
    return [1.0 / 0 for _ in responses]

def nan(prompts, responses, rows):
    return [math.nan] * len(responses)

def short(prompts, responses, rows):
    return [0.0] * (len(responses) - 1)

def text(prompts, responses, rows):
    return ["high"] * len(responses)
'''


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's matmuls gain nothing from a second thread, and on shared cores the threads wait on each
    # other (measured: generation 16 -> 897 tokens/s with 1 thread at load average 9; nca_lab.llm.demo does the same).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_demo_model(tmp_path_factory.mktemp("tiny_llama"), seed=0)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_rewards")
    (folder / "online_test_rewards.py").write_text(USER_REWARDS)
    sys.path.insert(0, str(folder))
    yield str(folder)
    sys.path.remove(str(folder))
    sys.modules.pop("online_test_rewards", None)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    rows = [{"prompt": f"Compute {a}+{b}=", "problem_id": f"{a}+{b}", "bonus": 0.5 * (i % 2)}
            for i, (a, b) in enumerate([(3, 4), (12, 7), (5, 9), (40, 2), (8, 8), (1, 6)])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def online(out, model_dir, prompts, *flags) -> list[str]:
    return ["--online", "--model", model_dir, "--data", prompts, "--output-dir", str(out), "--logging-steps", "1",
            "--save-steps", "1000", "--warmup-ratio", "0", "--lr-scheduler", "constant", "--lr", "1e-2",
            "--max-new-tokens", "8", "--max-length", "64", "--batch-size", "2", *flags]


def run(out, model_dir, prompts, *flags) -> dict:
    assert main(online(out, model_dir, prompts, *flags)) == 0
    return json.loads((out / "metrics.json").read_text())


def step_logs(metrics: dict) -> list[dict]:
    return [h for h in metrics["log_history"] if "loss" in h]


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


ONLINE_METRICS = ("reward", "reward_std", "reward_group_std", "frac_reward_zero_std", "accuracy", "kl",
                  "completions/mean_length", "completions/clipped_ratio", "timing/generation_s", "timing/scoring_s",
                  "timing/training_s", "throughput/generation_tokens_per_s", "throughput/training_tokens_per_s")


# ------------------------------------------------------------------------------------------- Proposition 20


@pytest.mark.parametrize("loss, k, expected", [("infonca", 4, math.log(4)), ("nca", 3, 2 * math.log(2))])
def test_sampler_reference_every_fresh_batch_starts_at_the_closed_form(tmp_path, model_dir, prompts, reward_dir,
                                                                      loss, k, expected):
    # --online-ref sampler: the reference of each step is the policy that drew its samples, so r_theta = 0 at every
    # fresh batch (not only at step 1): the loss of every step is the closed form at pi = pi_ref, although the
    # weights move (the rewards vary within groups, so the gradient is not zero).
    m = run(tmp_path / "run", model_dir, prompts, "--loss", loss, "--online-ref", "sampler", "--num-generations",
            str(k), "--reward", "online_test_rewards:varied", "--max-steps", "3", "--beta", "1.0")
    logs = step_logs(m)
    assert len(logs) == 3
    for log in logs:
        # same batch, same padding, eval vs train mode without dropout: float32 rounding only
        assert log["loss"] == pytest.approx(expected, abs=1e-5)
        assert abs(log["logratio/mean"]) < 1e-5
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # step 1 samples from mu itself
    assert max(log["grad_norm"] for log in logs) > 0
    assert any(not torch.equal(a, weights(model_dir)[name]) for name, a in weights(tmp_path / "run").items())
    for name in ONLINE_METRICS:
        assert all(name in log and math.isfinite(log[name]) for log in logs), name
    assert m["throughput"]["generation_tokens_per_second"] > 0 and m["throughput"]["training_tokens_per_second"] > 0


def test_initial_reference_stays_fixed(tmp_path, model_dir, prompts, reward_dir):
    # --online-ref initial: mu fixed. Step 1 is at pi = mu (ln K); afterwards r_theta = beta (log pi - log mu) != 0,
    # so the loss leaves ln K, and the KL estimate of the sampling policy to mu leaves 0.
    m = run(tmp_path / "run", model_dir, prompts, "--loss", "infonca", "--online-ref", "initial",
            "--num-generations", "4", "--reward", "online_test_rewards:varied", "--max-steps", "3", "--beta", "1.0")
    logs = step_logs(m)
    assert logs[0]["loss"] == pytest.approx(math.log(4), abs=1e-5)
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert abs(logs[-1]["loss"] - math.log(4)) > 1e-4
    assert abs(logs[-1]["logratio/mean"]) > 1e-4
    # initial mode: the implicit reward is log pi - log mu of samples of pi, i.e. exactly the KL estimate
    assert logs[-1]["kl"] == pytest.approx(logs[-1]["logratio/mean"], abs=1e-4)
    assert abs(logs[-1]["kl"]) > 1e-4  # a Monte-Carlo estimate from 8 samples: its sign is not guaranteed
    assert m["online"]["online_ref"] == "initial"


def test_lora_initial_reference_is_the_adapters_disabled_policy(tmp_path, model_dir, prompts, reward_dir):
    pytest.importorskip("peft")
    m = run(tmp_path / "run", model_dir, prompts, "--loss", "infonca", "--online-ref", "initial", "--lora",
            "--lora-r", "4", "--num-generations", "3", "--reward", "online_test_rewards:varied", "--max-steps", "2",
            "--beta", "1.0")
    logs = step_logs(m)
    assert logs[0]["loss"] == pytest.approx(math.log(3), abs=1e-5)  # LoRA starts with B = 0: pi = mu
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------------------------- rewards


def test_user_reward_module_on_pythonpath_through_the_cli(tmp_path, model_dir, prompts, reward_dir):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([reward_dir, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "nca_lab.llm.train",
                           *online(out, model_dir, prompts, "--loss", "nca", "--reward", "online_test_rewards:constant",
                                   "--num-generations", "2", "--max-steps", "1")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = step_logs(json.loads((out / "metrics.json").read_text()))[0]
    # constant reward 1.0: every group ties, every response is "correct"
    assert (log["reward"], log["reward_std"], log["frac_reward_zero_std"], log["accuracy"]) == (1.0, 0.0, 1.0, 1.0)


def test_builtin_arithmetic_reward_is_the_task_verifier(tmp_path, model_dir, prompts):
    from nca_lab.llm.rewards import resolve_reward
    from nca_lab.llm.study.task import Problem, verify

    fn, name = resolve_reward("arithmetic")
    assert name == "arithmetic" and fn.max_reward == 1.0
    prompts_ = ["Compute 37+58-21*3=", "Compute 37+58-21*3=", "ignored", "Compute 2*3="]
    responses = ["37+58=95; 21*3=63; 95-63=32; answer: 32", "37+58=95; 21*3=63; 95-63=32; answer: 33",
                 "2*3=6; answer: 6", "garbage"]
    rows = [{}, {}, {"problem_id": "2*3"}, {}]
    problem = Problem((37, 58, 21, 3), ("+", "-", "*"))
    assert fn(prompts_, responses, rows) == [1.0, verify(problem, responses[1]), 1.0, 0.0]
    assert fn(prompts_, responses, rows)[1] == 0.5
    # and it runs: the first loss at the sampler's reference is ln K whatever the rewards
    m = run(tmp_path / "run", model_dir, prompts, "--loss", "infonca", "--online-ref", "sampler", "--reward",
            "arithmetic", "--num-generations", "2", "--max-steps", "1")
    assert step_logs(m)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("spec, says", [
    ("no_such_reward", "not a built-in reward (arithmetic)"),
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("online_test_rewards:missing", "has no attribute 'missing'"),
])
def test_bad_reward_spec_is_one_line_exit_2(tmp_path, model_dir, prompts, reward_dir, capsys, spec, says):
    assert main(online(tmp_path / "run", model_dir, prompts, "--reward", spec, "--max-steps", "1")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --reward {spec!r}") and says in err[0], err


@pytest.mark.parametrize("fn, says", [
    ("boom", "raised ZeroDivisionError: float division by zero"),
    ("nan", "returned nan for response 0 (rewards must be finite)"),
    ("short", "returned 3 values for 4 responses"),
    ("text", "returned a non-number for response 0: 'high'"),
])
def test_failing_reward_function_stops_with_one_line(tmp_path, model_dir, prompts, reward_dir, capsys, fn, says):
    rc = main(online(tmp_path / "run", model_dir, prompts, "--reward", f"online_test_rewards:{fn}",
                     "--num-generations", "2", "--max-steps", "2"))
    assert rc != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    assert err[0].startswith(f"error: reward function 'online_test_rewards:{fn}' at step 1 {says}"), err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_online_options_are_checked(tmp_path, model_dir, prompts, capsys):
    for flags, says in ((["--max-steps", "1"], "--online needs --reward"),
                        (["--reward", "arithmetic", "--temperature", "0"], "--temperature must be > 0"),
                        (["--reward", "arithmetic", "--num-generations", "0"], "--num-generations must be >= 1"),
                        (["--reward", "arithmetic", "--max-new-tokens", "64"], "must exceed --max-new-tokens")):
        assert main(online(tmp_path / "run", model_dir, prompts, *flags)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert says in err[-1], err


# ------------------------------------------------------------------------------------------- resume


def test_resume_mid_run_ends_where_an_uninterrupted_run_ends(tmp_path, model_dir, prompts, reward_dir):
    # 2 optimizer steps of 2 micro-batches (1 prompt each); stopped after step 1, resumed to step 2. The samples of
    # each micro-batch are a function of (seed, step, micro-batch, process), so the resumed run draws what the
    # uninterrupted run drew; the Trainer's checkpoint restores weights, optimizer, schedule and data order.
    flags = ("--loss", "infonca", "--online-ref", "initial", "--num-generations", "3", "--reward",
             "online_test_rewards:varied", "--max-steps", "2", "--save-steps", "1", "--beta", "1.0",
             "--grad-accum", "2", "--batch-size", "1")
    full = run(tmp_path / "full", model_dir, prompts, *flags)
    assert main(online(tmp_path / "split", model_dir, prompts, *flags, "--stop-after-steps", "1")) == 0
    assert (tmp_path / "split" / "checkpoint-1").is_dir()
    resumed = run(tmp_path / "split", model_dir, prompts, *flags, "--resume")
    last = lambda m, key: step_logs(m)[-1][key]  # noqa: E731
    assert step_logs(resumed)[-1]["step"] == 2
    assert last(resumed, "loss") == pytest.approx(last(full, "loss"), abs=1e-6)
    assert last(resumed, "reward") == last(full, "reward")
    assert last(resumed, "completions/mean_length") == last(full, "completions/mean_length")
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6
    assert any(not torch.equal(a[n], weights(model_dir)[n]) for n in a)


def test_chat_template_prompts_and_shared_prompt_layout(tmp_path, prompts, reward_dir):
    # A chat model: text and message-list prompts go through the template's generation prompt (tokenised once);
    # the training forward uses the shared-prompt layout; the sampler's reference still gives ln K at every step.
    chat_model = save_demo_model(tmp_path / "chat_llama", seed=1, chat_template=True)
    data = tmp_path / "chat_prompts.jsonl"
    data.write_text(json.dumps({"prompt": "Compute 2+2="}) + "\n" + json.dumps(
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Compute 3*3="}]}) + "\n")
    m = run(tmp_path / "run", chat_model, str(data), "--loss", "infonca", "--online-ref", "sampler",
            "--num-generations", "3", "--reward", "online_test_rewards:varied", "--max-steps", "2", "--beta", "1.0",
            "--shared-prompt")
    assert [h["loss"] for h in step_logs(m)] == pytest.approx([math.log(3)] * 2, abs=1e-5)


def test_the_library_imports_no_experiment():
    # The built-in reward is a module:function string: importing the online trainer loads no experiment package.
    code = ("import sys, nca_lab.llm.online, nca_lab.llm.rewards, nca_lab.llm.train; "
            "print([m for m in sys.modules if m.startswith(('nca_lab.llm.study', 'nca_lab.llm.real_model'))])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
