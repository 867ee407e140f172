"""``python -m nca_lab.toy.plot``: every panel writes its PNG and JSON, and reruns reproduce the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nca_lab.toy import plot
from recorded import assert_reproduces

REPO_ROOT = Path(__file__).resolve().parents[1]


def _names() -> list[str]:
    return [f"toy_{letter}_{name}" for letter, (name, _) in plot.PANELS.items()]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One quick run of the command line (all panels) into a temporary folder."""
    out = tmp_path_factory.mktemp("figures")
    proc = subprocess.run(
        [sys.executable, "-m", "nca_lab.toy.plot", "--quick", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_quick_run_writes_every_panel(quick_run):
    for name in _names():
        png, js = quick_run / f"{name}.png", quick_run / f"{name}.json"
        assert png.stat().st_size > 10_000, f"{png} is missing or empty"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        record = json.loads(js.read_text())
        assert record["panel"] == name and record["quick"] is True and record["seed"] == 0


def test_quick_panels_hold_the_expected_numbers(quick_run):
    """The numbers behind the figures say what the figures claim (loose bounds: the theorem tests
    check these tightly; here a broken panel must not pass)."""
    load = lambda n: json.loads((quick_run / f"{n}.json").read_text())["data"]  # noqa: E731
    a = load("toy_a_optimum")
    for name, d in a["losses"].items():
        assert d["max_abs_error"] < 1e-6, name  # the solver's contract: |error| ≤ 1e-6
    b = load("toy_b_nca_gap")
    assert max(b["loo_labels"]["shape_error"]) < 1e-10 and max(b["softmax_labels"]["mass_error"]) < 1e-10
    assert min(b["loo_labels"]["mass_error"]) > 0 and min(b["softmax_labels"]["shape_error"]) > 0
    e = load("toy_e_ipo_dpo")
    for pair, target in e["ipo_closed_form"].items():
        assert abs(e["runs"]["ipo"][pair][-1] - target) < 1e-6  # IPO converges (contraction 1 − 2·lr = 0.5 per step)
        assert e["runs"]["dpo"][pair][-1] > 3 * target  # DPO's margins run away
    f = load("toy_f_cpl_bias")
    for rows in f["bias"].values():
        for row in rows:
            assert row[0] < 1e-6 and max(row) > 0.05  # λ = 1 is CPL's unbiased point


def test_rerun_of_a_panel_is_identical(quick_run, tmp_path):
    """Deterministic for a seed: the same quick panel in a fresh process gives identical JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", "nca_lab.toy.plot", "--quick", "--only", "trajectories,e", "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("toy_c_trajectories", "toy_e_ipo_dpo"):
        assert (tmp_path / f"{name}.json").read_text() == (quick_run / f"{name}.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}.{ext}" for n in ("toy_c_trajectories", "toy_e_ipo_dpo") for ext in ("json", "png")
    )


def test_seed_changes_the_random_panels(tmp_path):
    plot.make_panel("f", tmp_path / "s0", seed=0, quick=True)
    plot.make_panel("f", tmp_path / "s1", seed=1, quick=True)
    a = json.loads((tmp_path / "s0" / "toy_f_cpl_bias.json").read_text())
    b = json.loads((tmp_path / "s1" / "toy_f_cpl_bias.json").read_text())
    assert a["data"]["instances"] != b["data"]["instances"]


def test_only_accepts_letters_and_names():
    assert plot.panel_names(None) == list("abcdef")
    assert plot.panel_names("a,frontier,a") == ["a", "d"]
    with pytest.raises(ValueError, match="unknown panel 'z'"):
        plot.panel_names("z")


def _in_git() -> bool:
    proc = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return proc.returncode == 0


def _committed_toy_figures() -> list[str]:
    """Names of the committed ``figures/toy_*`` files: from ``HEAD`` in a git checkout (the main job, or an
    earlier test, may have rewritten the working tree's copies), else from the folder (an unpacked release)."""
    if _in_git():
        out = subprocess.run(["git", "ls-tree", "--name-only", "HEAD", "figures/"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout
        return [Path(line).name for line in out.splitlines() if Path(line).name.startswith("toy_")]
    return [p.name for p in (REPO_ROOT / "figures").glob("toy_*")]


def _committed_text(path: str) -> str:
    """A file as committed (``git show HEAD:path``), or the working tree's copy outside git."""
    if _in_git():
        return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout
    return (REPO_ROOT / path).read_text()


@pytest.mark.slow
def test_full_run_reproduces_the_committed_figures(tmp_path):
    """``python -m nca_lab.toy.plot`` (the full run, about 90 s on 2 cores), run into a temporary folder,
    regenerates every committed figure: the same panels, and JSON numbers equal to the committed
    ``figures/*.json`` (read from git's ``HEAD``, not from the working tree, which the main job rewrites) (``tests/recorded.py``:
    identical structure, floats to rel 1e-3 across CPUs; rerun on an Intel Xeon against the record made
    on an AMD EPYC, b, c, e and f came out identical and a, d within the tolerance)."""
    proc = subprocess.run([sys.executable, "-m", "nca_lab.toy.plot", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    committed = _committed_toy_figures()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("toy_")) == sorted(committed)
    for name in _names():
        assert_reproduces(json.loads((tmp_path / f"{name}.json").read_text()),
                          json.loads(_committed_text(f"figures/{name}.json")))
    # the loss atlas (nca_lab.toy.atlas_plot) is written beside the panels
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("toy_")) == ["atlas.json", "atlas.png"]
    assert_reproduces(json.loads((tmp_path / "atlas.json").read_text()), json.loads(_committed_text("figures/atlas.json")))


def test_committed_figures_exist():
    """The full run's outputs are committed under figures/ (``python -m nca_lab.toy.plot``)."""
    for name in _names():
        record = json.loads((REPO_ROOT / "figures" / f"{name}.json").read_text())
        assert record["quick"] is False and record["seed"] == 0
        assert (REPO_ROOT / "figures" / f"{name}.png").exists()
