"""Tokenisation of preference records: token ids with an exact prompt/response boundary.

A record (see :mod:`nca_lab.llm.data`) becomes::

    {"prompt_ids": list[int], "response_ids": list[list[int]] (K), "prompt_truncated": bool, ...}

and the sequence fed to the model for response k is ``prompt_ids + response_ids[k]``; the loss covers
``response_ids[k]`` only.  Every response ends with the EOS token, which belongs to the response (the model
must learn to stop).

Two renderings:

* **Chat template** (``tokenizer.chat_template`` is not None): the prompt (a text prompt becomes one user
  message) is rendered with ``add_generation_prompt=True``, the full conversation prompt + assistant response
  without it; both texts are encoded with ``add_special_tokens=False`` (the template writes its own BOS), and the
  response tokens are the full conversation's tokens after the prompt's.  The prompt tokens must be an exact
  prefix of the full tokens, else :class:`~nca_lab.llm.data.DataError` (a template or a tokenizer merge across
  the boundary would make the boundary ambiguous).  If the rendered response contains EOS, tokens after its
  last EOS (e.g. the ``"\\n"`` ChatML writes after ``<|im_end|>``) are cut, since generation stops at EOS;
  otherwise EOS is appended.  (A template whose end-of-turn token is not ``tokenizer.eos_token`` thus gets EOS
  appended after it: set ``tokenizer.eos_token`` to the end-of-turn token to avoid that.)
* **No chat template**: plain concatenation, prompt ids = ``tokenizer(prompt)`` with the tokenizer's special
  tokens (BOS if it adds one; a trailing EOS some tokenizers append is removed), response ids =
  ``tokenizer(response, add_special_tokens=False) + [eos_token_id]``.  Message-list prompts need a template.

Truncation policy (``max_length`` counts prompt + one response): responses are kept whole; when prompt +
longest response exceeds ``max_length`` (or the prompt exceeds ``max_prompt_length``) the prompt is truncated
from the LEFT, keeping its end, which is closest to the response; a leading BOS is kept.  A response that does
not fit with at least one prompt token is *over-long*: ``on_overlong="error"`` raises ``DataError`` naming row
and response, ``on_overlong="drop"`` drops it (and the row, if fewer than 2 responses remain).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nca_lab.llm.data import DataError

ON_OVERLONG = ("error", "drop")
# Bump when the token ids this module produces change, so caches keyed on tokenisation (reference log-probs)
# are invalidated.
TOKENIZATION_VERSION = 1


def _require_eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token (every response ends with it)")
    return tokenizer.eos_token_id


def _appends_eos(tokenizer) -> bool:
    """Whether ``tokenizer(text)`` (special tokens on) ends with an EOS the text itself does not produce."""
    eos = tokenizer.eos_token_id
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(with_special) and with_special[-1] == eos and (not without or without[-1] != eos)


def _row_name(row, rec: dict | None = None) -> str:
    """How errors name a record: its ``where`` (``"<file>: line N"``, set by ``load_records``), else ``row N``."""
    where = rec.get("where") if rec is not None else None
    if where:
        return where
    return f"row {row}" if row is not None else "record"


def _prompt_messages(prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _encode(tokenizer, texts: list[str], *, add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"])


def _encode_with_template(records: list[dict], rows: list, tokenizer) -> list[tuple[list[int], list[list[int]]]]:
    """Untruncated (prompt ids, response ids) per record through the chat template."""
    eos = _require_eos(tokenizer)
    prompts = [_prompt_messages(rec["prompt"]) for rec in records]
    conversations = [p + [{"role": "assistant", "content": resp}]
                     for p, rec in zip(prompts, records) for resp in rec["responses"]]
    prompt_texts = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=False)
    full_texts = tokenizer.apply_chat_template(conversations, tokenize=False) if conversations else []
    prompt_ids = _encode(tokenizer, list(prompt_texts), add_special_tokens=False)
    full_ids = iter(_encode(tokenizer, list(full_texts), add_special_tokens=False))
    out = []
    for rec, row, p_ids in zip(records, rows, prompt_ids):
        responses = []
        for k in range(len(rec["responses"])):
            ids = next(full_ids)
            if ids[:len(p_ids)] != p_ids:
                first = next((j for j, (a, b) in enumerate(zip(ids, p_ids)) if a != b), min(len(ids), len(p_ids)))
                raise DataError(
                    f"{_row_name(row, rec)}: the chat template breaks the prompt/response boundary for responses[{k}]: "
                    f"the prompt's {len(p_ids)} tokens are not a prefix of prompt+response (first difference at "
                    f"token {first}), so response tokens cannot be identified exactly. Use a template whose "
                    "generation prompt ends at a token boundary, or tokenize without it (tokenizer.chat_template "
                    "= None).", row=row, field=f"responses[{k}]", reason="chat template breaks prefix")
            response = ids[len(p_ids):]
            if eos in response:  # stop where generation stops: after the template's last EOS
                last = len(response) - 1 - response[::-1].index(eos)
                response = response[:last + 1]
            else:
                response = response + [eos]
            _check_no_inner_eos(response, eos, tokenizer, row, k, _row_name(row, rec))
            responses.append(response)
        out.append((p_ids, responses))
    return out


def _encode_plain(records: list[dict], rows: list, tokenizer) -> list[tuple[list[int], list[list[int]]]]:
    """Untruncated (prompt ids, response ids) per record by plain concatenation."""
    eos = _require_eos(tokenizer)
    for rec, row in zip(records, rows):
        if not isinstance(rec["prompt"], str):
            raise DataError(f"{_row_name(row, rec)}: prompt is a message list but the tokenizer has no chat template; "
                            "give the tokenizer one (tokenizer.chat_template = ...) or use text prompts",
                            row=row, field="prompt", reason="messages without chat template")
    prompt_ids = _encode(tokenizer, [rec["prompt"] for rec in records], add_special_tokens=True)
    if _appends_eos(tokenizer):  # an EOS between prompt and response would end the text early
        prompt_ids = [ids[:-1] if ids and ids[-1] == eos else ids for ids in prompt_ids]
    response_ids = iter(_encode(tokenizer, [resp for rec in records for resp in rec["responses"]],
                                add_special_tokens=False))
    out = []
    for rec, row, p_ids in zip(records, rows, prompt_ids):
        responses = [next(response_ids) + [eos] for _ in rec["responses"]]
        for k, response in enumerate(responses):
            _check_no_inner_eos(response, eos, tokenizer, row, k, _row_name(row, rec))
        out.append((p_ids, responses))
    return out


def _check_no_inner_eos(response: list[int], eos: int, tokenizer, row, k: int, name: str) -> None:
    """A response whose text holds the EOS token's string (e.g. ``<|im_end|>``) would end early at generation
    and train an end-of-turn mid-response: refuse it, naming row and response."""
    if eos in response[:-1]:
        raise DataError(f"{name}: responses[{k}] contains the end-of-sequence token "
                        f"{tokenizer.eos_token!r} inside its text; remove it (every response ends with exactly one)",
                        row=row, field=f"responses[{k}]", reason="EOS inside response")


def _fit(prompt_ids: list[int], response_ids: list[list[int]], rewards: list[float], row, name: str, *,
         max_length: int, max_prompt_length: int | None, on_overlong: str, bos_id: int | None) -> dict:
    """Apply the truncation policy to one record's untruncated ids."""
    kept = []
    for k, ids in enumerate(response_ids):
        if len(ids) + 1 > max_length:
            if on_overlong == "error":
                raise DataError(f"{name}: responses[{k}] is over-long: {len(ids)} tokens (EOS included) "
                                f"plus at least 1 prompt token exceed max_length={max_length}; responses are kept "
                                "whole, so raise max_length (--max-length) or drop such responses (--drop-overlong, "
                                "on_overlong='drop')",
                                row=row, field=f"responses[{k}]", reason="over-long response")
            continue
        kept.append(k)
    responses = [response_ids[k] for k in kept]
    budget = max_length - max((len(ids) for ids in responses), default=0)
    if max_prompt_length is not None:
        budget = min(budget, max_prompt_length)
    removed = max(0, len(prompt_ids) - budget)
    if removed:
        if bos_id is not None and prompt_ids[0] == bos_id and budget >= 2:
            prompt_ids = [bos_id] + prompt_ids[len(prompt_ids) - budget + 1:]
        else:
            prompt_ids = prompt_ids[len(prompt_ids) - budget:]
    return {"prompt_ids": list(prompt_ids), "response_ids": responses, "rewards": [rewards[k] for k in kept],
            "prompt_truncated": removed > 0, "prompt_tokens_removed": removed,
            "responses_dropped": len(response_ids) - len(kept)}


def _check_limits(max_length: int, max_prompt_length: int | None, on_overlong: str) -> None:
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2 (one prompt and one response token), got {max_length!r}")
    if max_prompt_length is not None and (not isinstance(max_prompt_length, int) or max_prompt_length < 1):
        raise ValueError(f"max_prompt_length must be None or an integer >= 1, got {max_prompt_length!r}")
    if on_overlong not in ON_OVERLONG:
        raise ValueError(f"on_overlong must be one of {ON_OVERLONG}, got {on_overlong!r}")


def _tokenize_records(records: list[dict], rows: list, tokenizer, *, max_length: int,
                      max_prompt_length: int | None, on_overlong: str) -> list[dict]:
    encode = _encode_with_template if getattr(tokenizer, "chat_template", None) is not None else _encode_plain
    encoded = encode(records, rows, tokenizer)
    return [_fit(p_ids, r_ids, rec["rewards"], row, _row_name(row, rec), max_length=max_length,
                 max_prompt_length=max_prompt_length, on_overlong=on_overlong, bos_id=tokenizer.bos_token_id)
            for rec, row, (p_ids, r_ids) in zip(records, rows, encoded)]


def tokenize_record(record: dict, tokenizer, *, max_length: int, max_prompt_length: int | None = None,
                    on_overlong: str = "error", row_index: int | None = None) -> dict:
    """Token ids of one record under the module's rendering and truncation policy.

    Returns ``{"prompt_ids", "response_ids", "prompt_truncated", "rewards", "prompt_tokens_removed",
    "responses_dropped"}``; ``rewards`` lists the kept responses' rewards (all of them unless
    ``on_overlong="drop"`` dropped some).  Errors name ``row_index`` (default: the record's ``row``).
    """
    _check_limits(max_length, max_prompt_length, on_overlong)
    row = row_index if row_index is not None else record.get("row")
    return _tokenize_records([record], [row], tokenizer, max_length=max_length,
                             max_prompt_length=max_prompt_length, on_overlong=on_overlong)[0]


@dataclass
class TokenizationReport:
    """Counts and token lengths after tokenisation (lengths over the kept rows; responses include EOS)."""

    rows_in: int = 0
    rows_out: int = 0
    rows_dropped: int = 0            # fewer than 2 responses left after dropping over-long ones
    responses_dropped: int = 0       # over-long responses (on_overlong="drop")
    prompts_truncated: int = 0
    prompt_tokens_removed: int = 0
    prompt_length_max: int = 0
    prompt_length_mean: float = 0.0
    response_length_max: int = 0
    response_length_mean: float = 0.0
    sequence_length_max: int = 0     # prompt + its longest response

    def summary(self) -> list[str]:
        """Human-readable lines (one fact each)."""
        return [
            f"tokenised: {self.rows_in} rows in, {self.rows_out} rows out",
            f"  prompts truncated (left): {self.prompts_truncated} ({self.prompt_tokens_removed} tokens removed)",
            f"  over-long responses dropped: {self.responses_dropped}; rows dropped (< 2 responses left): "
            f"{self.rows_dropped}",
            f"  prompt tokens: max {self.prompt_length_max}, mean {self.prompt_length_mean:.1f}; response tokens: "
            f"max {self.response_length_max}, mean {self.response_length_mean:.1f}; sequence max "
            f"{self.sequence_length_max}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.summary())


def _tokenize_batch(batch: dict, tokenizer, max_length: int, max_prompt_length: int | None,
                    on_overlong: str) -> dict:
    """``datasets.map(batched=True)`` worker: one output row per input row, with per-row statistics."""
    keys = list(batch)
    records = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
    rows = [rec["row"] for rec in records]
    outs = _tokenize_records(records, rows, tokenizer, max_length=max_length,
                             max_prompt_length=max_prompt_length, on_overlong=on_overlong)
    return {
        "prompt_ids": [o["prompt_ids"] for o in outs],
        "response_ids": [o["response_ids"] for o in outs],
        "rewards": [o["rewards"] for o in outs],
        "row": rows,
        "prompt_truncated": [o["prompt_truncated"] for o in outs],
        "prompt_tokens_removed": [o["prompt_tokens_removed"] for o in outs],
        "responses_dropped": [o["responses_dropped"] for o in outs],
        "response_lengths": [[len(ids) for ids in o["response_ids"]] for o in outs],
    }


_STAT_COLUMNS = ("prompt_truncated", "prompt_tokens_removed", "responses_dropped", "response_lengths")


def tokenize_dataset(dataset, tokenizer, *, max_length: int, max_prompt_length: int | None = None,
                     on_overlong: str = "error", num_proc: int | None = None, batch_size: int = 256):
    """Tokenise a records dataset (columns ``prompt``, ``responses``, ``rewards``, optionally ``row``).

    Returns ``(dataset, report)``: columns ``prompt_ids``, ``response_ids``, ``rewards`` and ``row`` (the source
    row index; the position in ``dataset`` when it has no ``row`` column), rows with fewer than 2 responses left
    removed, and a :class:`TokenizationReport`.  Encoding is batched through the fast tokenizer.
    """
    import datasets
    import numpy as np

    _check_limits(max_length, max_prompt_length, on_overlong)
    if "row" not in dataset.column_names:
        dataset = dataset.add_column("row", list(range(len(dataset))))
    features = datasets.Features({
        "prompt_ids": datasets.List(datasets.Value("int32")),
        "response_ids": datasets.List(datasets.List(datasets.Value("int32"))),
        "rewards": datasets.List(datasets.Value("float64")),
        "row": datasets.Value("int64"),
        "prompt_truncated": datasets.Value("bool"),
        "prompt_tokens_removed": datasets.Value("int64"),
        "responses_dropped": datasets.Value("int64"),
        "response_lengths": datasets.List(datasets.Value("int64")),
    })
    tokenized = dataset.map(
        _tokenize_batch, batched=True, batch_size=batch_size, num_proc=num_proc,
        remove_columns=dataset.column_names, features=features, desc="tokenising",
        # datasets fingerprints module functions by name, not code: a cached result could outlive a change to
        # the tokenisation code, so recompute (cheap next to training).
        load_from_cache_file=False,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "max_prompt_length": max_prompt_length,
                   "on_overlong": on_overlong})

    stats = tokenized.select_columns(list(_STAT_COLUMNS) + ["prompt_ids"]).to_dict()
    response_lengths = stats["response_lengths"]
    keep = np.array([len(lengths) >= 2 for lengths in response_lengths], dtype=bool)
    kept_prompt = np.array([len(ids) for ids, k in zip(stats["prompt_ids"], keep) if k], dtype=np.int64)
    kept_responses = [lengths for lengths, k in zip(response_lengths, keep) if k]
    flat_responses = np.array([n for lengths in kept_responses for n in lengths], dtype=np.int64)
    report = TokenizationReport(
        rows_in=len(dataset), rows_out=int(keep.sum()), rows_dropped=int((~keep).sum()),
        responses_dropped=int(sum(stats["responses_dropped"])),
        prompts_truncated=int(sum(stats["prompt_truncated"])),
        prompt_tokens_removed=int(sum(stats["prompt_tokens_removed"])),
    )
    if report.rows_out:
        report.prompt_length_max = int(kept_prompt.max())
        report.prompt_length_mean = float(kept_prompt.mean())
        report.response_length_max = int(flat_responses.max())
        report.response_length_mean = float(flat_responses.mean())
        report.sequence_length_max = int(max(p + max(r) for p, r in zip(kept_prompt, kept_responses)))
    if report.rows_in and not report.rows_out:
        # on_overlong="drop" left nothing to train on: refuse rather than train on 0 samples
        where = dataset[0].get("where") if "where" in dataset.column_names else None
        raise DataError(
            f"{where.rsplit(': ', 1)[0] + ': ' if where else ''}every row was dropped: all {report.rows_in} rows have "
            f"fewer than 2 responses that fit max_length={max_length} ({report.responses_dropped} over-long "
            f"responses dropped, --drop-overlong); nothing to train on: raise --max-length", reason="all rows dropped")
    if report.rows_dropped:
        tokenized = tokenized.select(np.flatnonzero(keep))
    return tokenized.remove_columns(list(_STAT_COLUMNS)), report


# --------------------------------------------------------------------------------------------- tiny tokenizer

_TINY_CORPUS = """\
Human: What is the capital of France?
Assistant: The capital of France is Paris.
Human: Can you add two and three? Assistant: Two plus three is five.
The quick brown fox jumps over the lazy dog. A reward model scores each response; higher is better.
Noise contrastive alignment compares K responses per prompt and learns from their rewards.
Please answer the question step by step. The answer is 42. Thank you! I am sorry, I cannot help with that.
def f(x): return x + 1  # code, numbers 0 1 2 3 4 5 6 7 8 9, punctuation .,;:!?'"()[]{}<>-_=+*/\\|@#$%^&~`
"""

CHATML_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(save_dir: str | os.PathLike | None = None, *, chat_template: bool | str = False,
                         vocab_size: int = 384):
    """A small real byte-level BPE ``PreTrainedTokenizerFast``, trained in-process on a built-in corpus.

    Byte-level, so every string encodes and decodes exactly.  Special tokens ``<pad> <s> </s> <unk>
    <|im_start|> <|im_end|>`` (ids 0-5, the same in both variants); ``tokenizer(text)`` prepends ``<s>``.
    ``chat_template=False``: no template, EOS ``</s>``.  ``True``: a ChatML template (``CHATML_TEMPLATE``) with EOS
    ``<|im_end|>``, like instruction-tuned Qwen.  A string: that template, EOS ``</s>``.  With ``save_dir`` the
    tokenizer is also written with ``save_pretrained`` (reload with ``AutoTokenizer.from_pretrained(save_dir)``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(_TINY_CORPUS.splitlines(), trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))])
    template = CHATML_TEMPLATE if chat_template is True else (chat_template or None)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="<|im_end|>" if chat_template is True else "</s>",
        pad_token="<pad>", unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = template
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer
