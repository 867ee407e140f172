"""The loss atlas figure's numbers (``figures/atlas.json``, written by ``python -m nca_lab.toy.plot``): every claim of
the README's atlas table that reads "atlas" is checked here against the committed JSON, and the JSON's minimisers
against the closed forms that exist.

Tolerance: the JSON rounds to ``studies.SIGNIFICANT_DIGITS`` (6) significant digits and the solver's contract is
1e-6, so closed forms are matched to 1e-5 absolute on values of order 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nca_lab import theory, theory_atlas as TA
from nca_lab.losses import LOSSES
from nca_lab.toy.atlas import ATLAS_INSTANCE
from nca_lab.toy.atlas_plot import ROWS, split_only

ATLAS_JSON = Path(__file__).resolve().parents[1] / "figures" / "atlas.json"
TOL = 1e-5
MU = np.asarray(ATLAS_INSTANCE["mu"])
R = np.asarray(ATLAS_INSTANCE["r"])
BEST = int(np.argmax(R))


@pytest.fixture(scope="module")
def atlas():
    return json.loads(ATLAS_JSON.read_text())


def _f(atlas, row, name):
    rec = atlas["rows"][row][name]
    assert rec["status"] == "finite", (row, name, rec)
    return np.asarray(rec["f"])


def test_split_only():
    assert split_only(None) == (None, True)
    assert split_only("atlas") == ("", True)
    assert split_only("a,atlas, c") == ("a,c", True)
    assert split_only("a,c") == ("a,c", False)


def test_every_loss_and_row_is_recorded(atlas):
    assert atlas["instance"]["mu"] == ATLAS_INSTANCE["mu"] and atlas["instance"]["r"] == ATLAS_INSTANCE["r"]
    assert list(atlas["rows"]) == [f"{lab}@K={K}" for lab, K in ROWS]
    for row in atlas["rows"].values():
        assert sorted(row) == sorted(LOSSES)


def test_which_losses_have_a_finite_minimiser(atlas):
    """The README table's column "finite minimiser, deterministic preferences (R = r)" and its BT entries."""
    finite = lambda row: {n for n, rec in atlas["rows"][row].items() if rec["status"] == "finite"}  # noqa: E731
    det = {"infonca", "nca", "cdpo", "ipo", "pro", "sft", "exo", "sppo", "astar_po"}
    assert finite("reward@K=2") == det
    assert finite("reward@K=4") == det | {"discopop"}
    assert {n for n, rec in atlas["rows"]["bt@K=2"].items() if rec["status"] == "none"} == {"apo_zero", "apo_down", "kto"}
    for row in atlas["rows"].values():
        assert {n for n, rec in row.items() if rec["status"] == "piecewise-linear"} == {"hinge", "clha", "rrhf"}


def test_closed_forms_on_the_atlas_instance(atlas):
    log_Z = float(np.log(np.sum(MU * np.exp(R))))
    for K in (2, 4):
        row = f"reward@K={K}"
        np.testing.assert_allclose(_f(atlas, row, "infonca"), R - log_Z, atol=TOL)  # Prop 1, normalised
        np.testing.assert_allclose(_f(atlas, row, "nca"), theory.nca_optimum(MU, R, 1.0, K), atol=TOL)  # Prop 3
        np.testing.assert_allclose(_f(atlas, row, "astar_po"), TA.astar_optimum(MU, R, 1.0, K), atol=TOL)  # Prop 23
        # sppo with R = r: E[P̂ | y] − ½ = μ(r < r_y) + ½μ_y − ½ at every K (the other draws are i.i.d.)
        below = np.array([MU[R < ry].sum() for ry in R])
        np.testing.assert_allclose(_f(atlas, row, "sppo"), below + MU / 2 - 0.5, atol=TOL)
        # sft (policy parameterisation): π*(y) = P(y is the best of K draws) = μ(r ≤ r_y)^K − μ(r < r_y)^K
        p_best = (below + MU) ** K - below**K
        np.testing.assert_allclose(_f(atlas, row, "sft"), np.log(p_best / MU), atol=TOL)
    bt = "bt@K=2"
    p = theory.bt_win_probability(MU, R)
    np.testing.assert_allclose(_f(atlas, bt, "dpo"), theory.dpo_bt_optimum(MU, R, 1.0), atol=TOL)  # Prop 8
    np.testing.assert_allclose(_f(atlas, bt, "plackett_luce"), theory.dpo_bt_optimum(MU, R, 1.0), atol=TOL)  # Prop 24
    np.testing.assert_allclose(_f(atlas, bt, "nca_pair"), np.log(2 * p), atol=TOL)  # Prop 7
    np.testing.assert_allclose(_f(atlas, bt, "bco_pair"), np.log(p / (1 - p)), atol=TOL)  # Prop 22
    np.testing.assert_allclose(_f(atlas, bt, "sppo"), p - 0.5, atol=TOL)  # Prop 22


def test_readme_columns_normalised_and_sign_at_the_best(atlas):
    rows = atlas["rows"]
    mass = lambda row, n: rows[row][n]["mass"]  # noqa: E731
    assert abs(mass("bt@K=2", "bco_pair") - 1.19) < 0.01
    assert abs(mass("reward@K=2", "sppo") - 1.04) < 0.01
    assert abs(mass("reward@K=2", "astar_po") - 0.95) < 0.01 and abs(mass("reward@K=4", "astar_po") - 0.96) < 0.01
    assert abs(mass("reward@K=2", "nca") - 1) < 1e-5 and abs(mass("bt@K=2", "nca_pair") - 1) < 1e-5
    for row, rec_by_name in rows.items():
        for name, rec in rec_by_name.items():
            if rec["status"] != "finite":
                continue
            if rec["shift_invariant"]:
                assert abs(rec["mass"] - 1) < 1e-5, (row, name)  # the normalised representative
            if name == "discopop" and row == "reward@K=4":
                assert rec["f"][BEST] < 0  # the local minimiser Newton reaches from π = μ is anti-ordered
                assert np.all(np.diff(np.asarray(rec["f"])[np.argsort(R)]) < 0)
            elif name != "discopop":
                assert rec["f"][BEST] >= 0, (row, name)
