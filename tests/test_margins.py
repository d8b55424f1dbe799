"""The margin-activity table (reports/<suite>/margins.md) against hand-computed values."""
import numpy as np
import pandas as pd
import pytest

from greg_ood.report.margins import margin_table


def _curve(exp, method, seed, fid, faux, group="main"):
    n = len(fid)
    return pd.DataFrame({"step": np.arange(1, n + 1) * 10, "active_frac_id": fid, "active_frac_aux": faux,
                         "energy_id_p50": np.linspace(-20, -30, n) - seed, "energy_id_p95": -18.0,
                         "energy_aux_p5": -9.0, "energy_aux_p50": np.linspace(-6, -4, n) + seed,
                         "experiment": exp, "method": method, "arch": "small_cnn", "seed": seed, "group": group,
                         "lambda_grad": 1.0})


def test_margin_table_known_values():
    curves = pd.concat([
        _curve("s-greg-s0", "greg", 0, [0.2, 0.6, 1.0], [0.5, 0.5, 0.8]),
        _curve("s-greg-s1", "greg", 1, [0.4, 0.8, 0.6], [0.7, 0.9, 1.0]),
        _curve("s-energy-s0", "energy", 0, [0.0, 0.0, 0.1], [1.0, 1.0, 1.0]),
        _curve("s-greg-s0-lg10", "greg", 0, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], group="ablation"),
    ], ignore_index=True)
    margins = {e: (-25.0, -7.0) for e in curves["experiment"].unique()}
    t = margin_table(curves, margins, suite="s")
    assert list(t["Method"]) == ["Energy", "GReg"]          # the paper's order; the ablation run is left out
    g = t.set_index("Method").loc["GReg"]
    assert g["n"] == "2" and g["m_in / m_out"] == "-25 / -7"
    # ID shares: first (0.2 + 0.4) / 2, mean over steps ((0.6 + 0.6) / 2 + ...) = (0.6 + 0.6) / 2, last (1.0 + 0.6) / 2
    assert g["ID rows with E < m_in, first step %"] == "30.0"
    assert g["ID rows with E < m_in, mean %"] == "60.0"
    assert g["ID rows with E < m_in, last step %"] == "80.0"
    # aux: first (0.5 + 0.7) / 2, mean (0.6 + 0.8667) / 2, last (0.8 + 1.0) / 2
    assert g["aux rows with E > m_out, first step %"] == "60.0"
    assert g["aux rows with E > m_out, mean %"] == "73.3"
    assert g["aux rows with E > m_out, last step %"] == "90.0"
    # last-step percentiles, median over seeds: ID p50 -30 - seed -> median(-30, -31) = -30.5; aux p50 -4 + seed
    assert g["ID E p50, last step"] == "-30.5" and g["aux E p50, last step"] == "-3.5"
    assert "training batches only" in t.attrs["caption"]


def test_margin_table_states_each_run_margin_and_missing_columns():
    c = _curve("s-greg-s0", "greg", 0, [0.5], [0.5])
    t = margin_table(pd.concat([c, _curve("s-greg-s1", "greg", 1, [0.5], [0.5])]),
                     {"s-greg-s0": (-25.0, -7.0), "s-greg-s1": (-12.0, -4.0)}, suite="s")
    assert t.loc[0, "m_in / m_out"] == "-25 / -7; -12 / -4"   # two settings in one row are both printed
    with pytest.raises(ValueError, match="active_frac_id"):
        margin_table(c.drop(columns=["active_frac_id", "active_frac_aux"]), {}, suite="s")
