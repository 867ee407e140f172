"""One ``state.json`` shared by several processes of the same v2 study (``--methods``: one process per group of
methods, all on the same ``--out``).

Each process keeps the whole state in memory and rewrites the file after every unit. Rewriting it blindly would
drop what another process recorded since this one last read it, so every save merges under an exclusive lock:
read the file, merge this process's state into it (:func:`merge_states`), write it atomically, and adopt the
merged state. The processes work on disjoint methods, so a run, a sweep selection or a logged unit is only ever
advanced by one of them; the merge keeps, of two copies of the same item, the more advanced one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

__all__ = ["merge_states", "locked_save", "lock_methods"]


def _progress(rec: dict) -> tuple[int, int]:
    """How far a run record has come: (evaluated at all, number of evaluated checkpoints)."""
    evaluated = any(rec.get(k) is not None for k in ("validation", "test")) or bool(rec.get("diverged"))
    return int(evaluated), len(rec.get("checkpoint_evals") or {})


def _merge_lists(disk: list, mine: list) -> list:
    """``disk`` followed by what ``mine`` appended after their common prefix (each process appends its own
    invocation to the list it loaded)."""
    k = 0
    while k < min(len(disk), len(mine)) and disk[k] == mine[k]:
        k += 1
    return list(disk) + list(mine[k:])


def merge_states(disk: dict, mine: dict, synced_timings: dict | None = None) -> dict:
    """The state with everything of ``disk`` (the file, maybe advanced by other processes) and of ``mine``.

    ``runs``: union by ``run_id``; of two copies the more advanced (:func:`_progress`), ``mine`` on a tie.
    ``selection``, ``mus``, ``samples``, ``stopped_by`` (each process's stop reason): union by key; a complete
    selection wins over an incomplete one. ``unit_log``: union by (kind, name), in order of finishing.
    ``commands``: the file's, then what this process appended. ``timings`` (seconds per stage, summed over the
    processes that ran it: two processes side by side count twice): the file's plus what this process added
    since ``synced_timings`` (its timings as of its last save or load). Everything else: ``mine``.
    """
    out = dict(mine)
    runs = {r["run_id"]: r for r in disk.get("runs", [])}
    for r in mine.get("runs", []):
        other = runs.get(r["run_id"])
        if other is None or _progress(r) >= _progress(other):
            runs[r["run_id"]] = r
    out["runs"] = list(runs.values())
    sel = dict(disk.get("selection", {}))
    for key, s in mine.get("selection", {}).items():
        if not (sel.get(key, {}).get("complete") and not s.get("complete")):
            sel[key] = s
    out["selection"] = sel
    for key in ("mus", "samples", "stopped_by"):
        if key in disk or key in mine:
            out[key] = {**disk.get(key, {}), **mine.get(key, {})}
    log = {(u["kind"], u["name"]): u for u in disk.get("unit_log", [])}
    log.update({(u["kind"], u["name"]): u for u in mine.get("unit_log", [])})
    out["unit_log"] = sorted(log.values(), key=lambda u: u.get("finished_at", ""))
    if "commands" in disk or "commands" in mine:  # absent until a study is first resumed
        out["commands"] = _merge_lists(disk.get("commands", []), mine.get("commands", []))
    timings = dict(disk.get("timings", {}))
    base = synced_timings or {}
    for key, v in mine.get("timings", {}).items():
        timings[key] = round(timings.get(key, 0.0) + v - base.get(key, 0.0), 1)
    out["timings"] = timings
    return out


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # blocks until the other process has written its save
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def locked_save(state_path: Path, state: dict, write, synced_timings: dict | None = None) -> dict:
    """Merge ``state`` into the file at ``state_path`` (:func:`merge_states`) and write the result with
    ``write(path, obj)``, all under an exclusive lock on ``<state_path>.lock``; returns the merged state."""
    with _locked(state_path.with_name(state_path.name + ".lock")):
        merged = (merge_states(json.loads(state_path.read_text()), state, synced_timings) if state_path.is_file()
                  else state)
        write(state_path, merged)
    return merged


def lock_methods(out: Path, methods: list[str], stack: contextlib.ExitStack) -> None:
    """Hold, until ``stack`` closes (or the process dies), a lock per method on ``<out>/locks/method_<m>.lock``:
    two processes that would train the same method on the same study (overlapping ``--methods``, or a leftover
    worker of a killed parent) would do the same runs twice; the second one is refused instead."""
    (out / "locks").mkdir(exist_ok=True)
    for m in methods:
        path = out / "locks" / f"method_{m}.lock"
        fh = stack.enter_context(open(path, "a"))
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"methods: {m} is being trained by another process on this study (lock {path}); "
                             "wait for it or stop it, then --resume") from None
