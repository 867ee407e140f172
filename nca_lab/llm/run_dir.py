"""The output directory of a training run: checks before anything is written, complete checkpoints, and the record
of what defines the run (``run_config.json``) that ``--resume`` checks.

* :func:`check_model_path` — a ``--model`` that is meant as a local path must exist (no minute of hub retries), and
  ``--output-dir`` must not be (or lie inside) the ``--model`` folder, nor hold it when ``--overwrite`` would
  delete it.
* :func:`prepare_output_dir` — a non-empty directory needs ``--resume`` or ``--overwrite``; nothing is deleted
  here: :func:`clear_checkpoints` runs only once the new run's data, options and model have been checked.
* :func:`latest_complete_checkpoint` — the newest ``checkpoint-N`` holding ``trainer_state.json`` (the Trainer
  writes it last), model weights and optimizer state; a checkpoint half-written by a killed run is skipped.
* :func:`run_definition` / :func:`check_resume` — the settings, data content hash, model fingerprint and K that
  define a run, stored at its start and compared on ``--resume`` (``--resume-force`` overrides).

Every problem is a ``ValueError`` naming the option, which the CLI prints as one line with exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nca_lab.llm.config import TrainConfig, resolved_hparams

__all__ = ["check_model_path", "prepare_output_dir", "clear_checkpoints", "checkpoint_problem",
           "latest_complete_checkpoint", "content_sha256", "run_definition", "write_run_config", "check_resume",
           "RUN_CONFIG"]

RUN_CONFIG = "run_config.json"
# Options that define what a run computes (changing one mid-run makes a different run). Not in the list: the
# length (--max-steps/--epochs, so a run can be extended), logging/saving/evaluation, and the speed switches
# (--packed, --shared-prompt, --chunk-size, ...), which leave the numbers unchanged.
RUN_DEFINING = ("model", "data", "split", "schema", "reward_field", "skip_invalid_rows", "loss", "max_length",
                "max_prompt_length", "drop_overlong", "seed", "lr", "batch_size", "grad_accum", "lr_scheduler",
                "warmup_ratio", "weight_decay", "max_grad_norm", "bf16", "dropout", "ref_mode", "lora", "lora_r",
                "lora_alpha", "lora_target_modules")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin",
                 "pytorch_model_fsdp_0")  # --fsdp: accelerate's sharded (torch.distributed.checkpoint) model folder


# ----------------------------------------------------------------------------------------- before anything runs


def _looks_like_path(model: str) -> bool:
    """``--model`` meant as a local folder: starts with ``.``, ``/`` or ``~``, has a backslash or more than one
    ``/``, or is ``a/b`` with ``a`` an existing local folder. A hub id is ``name`` or ``org/name``."""
    if model.startswith((".", "/", "~")) or "\\" in model or model.endswith("/") or model.count("/") > 1:
        return True
    return "/" in model and os.path.isdir(model.split("/", 1)[0])


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_model_path(cfg: TrainConfig) -> None:
    """A missing local ``--model`` folder, and an ``--output-dir`` that would write over it, are refused."""
    from nca_lab.llm.packaged import PACKAGED_MODELS

    model = cfg.model
    if model is None or model in PACKAGED_MODELS:
        return
    if _looks_like_path(model) and not os.path.exists(os.path.expanduser(model)):
        raise ValueError(f"--model {model!r}: no such file or directory (a local path; a hub id is 'name' or "
                         "'org/name')")
    if cfg.output_dir is None or not os.path.isdir(model):
        return
    if _inside(cfg.output_dir, model):
        raise ValueError(f"--output-dir {cfg.output_dir!r} is (or lies inside) the --model folder {model!r}: the run "
                         "would write over the base model; choose another --output-dir")
    if cfg.overwrite and _inside(model, cfg.output_dir):
        raise ValueError(f"--model {model!r} lies inside --output-dir {cfg.output_dir!r}, which --overwrite would "
                         "clear; copy the model elsewhere or choose another --output-dir")


def prepare_output_dir(cfg: TrainConfig) -> str:
    """Check the output directory against ``--resume``/``--overwrite``; returns its path. Deletes nothing.

    A non-empty directory is refused unless ``--resume`` (which needs a complete ``checkpoint-*`` in it) or
    ``--overwrite`` (whose ``checkpoint-*`` folders :func:`clear_checkpoints` removes just before training, so that
    no stale checkpoint is resumed later; other files are overwritten as the run writes them).
    """
    out = cfg.output_dir
    if out is None:
        if not cfg.is_demo:
            raise ValueError("--output-dir is required (where checkpoints, the model and metrics.json go)")
        if cfg.resume:
            raise ValueError("--resume needs --output-dir (the directory holding the checkpoints)")
        return tempfile.mkdtemp(prefix="nca_lab_demo_")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--output-dir {out!r} exists and is not a directory")
    non_empty = os.path.isdir(out) and any(os.scandir(out))
    if cfg.resume:
        if cfg.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; give one")
        latest_complete_checkpoint(out)  # ValueError when there is none
    elif non_empty and not cfg.overwrite:
        raise ValueError(f"--output-dir {out!r} is not empty; pass --resume to continue its run or --overwrite "
                         "to replace it")
    return out


def clear_checkpoints(out: str) -> list[str]:
    """Remove the ``checkpoint-*`` folders of ``out`` (``--overwrite``); returns their names."""
    removed = []
    if os.path.isdir(out):
        for entry in sorted(os.scandir(out), key=lambda e: e.name):
            if entry.is_dir() and entry.name.startswith("checkpoint-"):
                shutil.rmtree(entry.path)
                removed.append(entry.name)
    return removed


# ----------------------------------------------------------------------------------------- checkpoints


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a complete Trainer checkpoint, or ``None`` if it is one.

    Complete: a readable ``trainer_state.json`` (the Trainer writes it after everything else), model weights
    (full, sharded or adapter) and optimizer state (``optimizer.pt``, FSDP's ``optimizer_0/``, or DeepSpeed's
    ``global_step*``).
    """
    path = Path(path)
    try:
        json.loads((path / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError):
        return "unreadable trainer_state.json"
    names = set(os.listdir(path))
    if not names & set(_WEIGHT_FILES):
        return "no model weights"
    if not any(n.startswith(("optimizer", "global_step")) for n in names):
        return "no optimizer state"
    return None


def _step(name: str) -> int:
    tail = name.removeprefix("checkpoint-")
    return int(tail) if tail.isdigit() else -1


def latest_complete_checkpoint(out: str) -> tuple[str, list[str]]:
    """The newest complete ``checkpoint-N`` of ``out`` and the newer incomplete ones skipped (``"name (why)"``).
    ValueError naming ``--output-dir`` when there is no complete one."""
    folders = [e for e in os.scandir(out) if e.is_dir() and _step(e.name) >= 0] if os.path.isdir(out) else []
    skipped = []
    for entry in sorted(folders, key=lambda e: _step(e.name), reverse=True):
        problem = checkpoint_problem(entry.path)
        if problem is None:
            return entry.path, skipped
        skipped.append(f"{entry.name} ({problem})")
    found = f" (incomplete: {', '.join(skipped)})" if skipped else ""
    raise ValueError(f"--resume: no complete checkpoint-* folder in --output-dir {out!r}{found}")


# ----------------------------------------------------------------------------------------- run_config.json


def content_sha256(source: str | None) -> str | None:
    """sha256 of a local file's bytes, or of a local folder's files (relative names and bytes, sorted); ``None``
    for anything else (a hub id: its name and split are compared instead)."""
    if source is None or not os.path.exists(source):
        return None
    h = hashlib.sha256()
    files = [Path(source)] if os.path.isfile(source) else sorted(p for p in Path(source).rglob("*") if p.is_file())
    for f in files:
        if os.path.isdir(source):
            h.update(f"{f.relative_to(source)};".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def run_definition(cfg: TrainConfig, *, model_sha256: str | None, max_responses: int) -> dict[str, Any]:
    """What defines a run: the :data:`RUN_DEFINING` options, the loss's resolved hyperparameters, the data file's
    content hash, the model's weight fingerprint and K (the most responses a prompt has)."""
    out: dict[str, Any] = {name: getattr(cfg, name) for name in RUN_DEFINING}
    out["hparams"] = resolved_hparams(cfg)
    out["data_sha256"] = content_sha256(cfg.data)
    out["model_sha256"] = model_sha256
    out["max_responses"] = max_responses
    return json.loads(json.dumps(out, default=str))  # as it reads back from the file


def write_run_config(out: str, definition: dict[str, Any]) -> None:
    path = Path(out, RUN_CONFIG)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN_CONFIG}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(definition, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def claim_output_dir(out: str, cfg: TrainConfig, definition: dict[str, Any], *, state, is_main: bool) -> None:
    """Take ``out`` for this run, once every check has passed (data, options, model, reference): only now does
    ``--overwrite`` remove the old run's checkpoints, which this run replaces, and ``run_config.json`` is written
    (kept as stored on a checked ``--resume``).  The main process does it between two barriers of the
    accelerate ``state``, so no process starts training on a half-cleared folder."""
    state.wait_for_everyone()
    if is_main:
        if cfg.overwrite:
            removed = clear_checkpoints(out)
            if removed:
                print(f"--overwrite: removed {', '.join(removed)} from {out}", flush=True)
        if not cfg.resume or cfg.resume_force or not os.path.isfile(os.path.join(out, RUN_CONFIG)):
            write_run_config(out, definition)
    state.wait_for_everyone()


def _differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(stored) | set(now)):
        was, new = stored.get(key), now.get(key)
        # A moved model folder or data file is the same run: where content hashes exist, they decide.
        if key == "model" and stored.get("model_sha256") and now.get("model_sha256"):
            continue
        if key == "data" and stored.get("data_sha256") and now.get("data_sha256"):
            continue
        if key == "hparams":
            was, new = was or {}, new or {}
            out += [f"--{k.replace('_', '-')} {was.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(was) | set(new))
                    if was.get(k) != new.get(k)]
        elif was != new:
            name = {"data_sha256": "--data content (sha256)", "model_sha256": "--model weights (sha256)",
                    "max_responses": "K (responses per prompt)"}.get(key, "--" + key.replace("_", "-"))
            if key.endswith("sha256"):
                was, new = (v[:12] if isinstance(v, str) else v for v in (was, new))
            out.append(f"{name} {was!r} -> {new!r}")
    return out


def check_resume(out: str, definition: dict[str, Any], force: bool) -> str | None:
    """Compare the run being resumed (``out/run_config.json``) with ``definition``.

    A difference is a ValueError naming the settings that differ, unless ``force`` (then it is returned as a
    note to print). A run without ``run_config.json`` (started by an older version) is not checked: a note says so.
    """
    path = Path(out, RUN_CONFIG)
    if not path.is_file():
        return f"--resume: {path} is missing (a run started before it was recorded): settings not checked"
    diffs = _differences(json.loads(path.read_text()), definition)
    if not diffs:
        return None
    listed = "; ".join(diffs)
    if force:
        return f"--resume-force: continuing although settings differ from {path}: {listed}"
    raise ValueError(f"--resume: this run differs from the one in {out!r} ({RUN_CONFIG}): {listed}; resume with the "
                     "run's settings, or pass --resume-force to continue anyway")
