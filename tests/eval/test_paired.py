"""Paired differences of per-image bounds (:mod:`hlvm.eval.paired`) against numpy and closed forms."""

import math

import numpy as np
import pytest
import torch

from hlvm.eval import paired_difference, paired_table


def test_paired_difference_against_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(-90, 5, 200), rng.normal(-91, 5, 200)
    out = paired_difference(torch.tensor(a), b.tolist())
    d = a - b
    assert out["n"] == 200
    assert out["delta"] == pytest.approx(d.mean(), rel=1e-12)
    assert out["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(200), rel=1e-12)
    assert out["share_a_gt_b"] == pytest.approx(np.mean(a > b), abs=0)
    unpaired = math.sqrt(a.var(ddof=1) / 200 + b.var(ddof=1) / 200)
    assert out["se_unpaired"] == pytest.approx(unpaired, rel=1e-12)


def test_closed_form_on_a_hand_made_example():
    """a − b = (1, 2, 3, −2): Δ = 1, sd = √(14/3), SE = sd/2; A ahead on 3 of 4 images; a tie
    counts for neither row."""
    out = paired_difference([3.0, 5.0, 6.0, 0.0], [2.0, 3.0, 3.0, 2.0])
    assert out["delta"] == 1.0 and out["n"] == 4 and out["share_a_gt_b"] == 0.75
    assert out["se"] == pytest.approx(math.sqrt(14 / 3) / 2, rel=1e-14)
    assert paired_difference([1.0, 2.0], [1.0, 3.0])["share_a_gt_b"] == 0.0
    one = paired_difference([1.5], [0.5])
    assert one["delta"] == 1.0 and math.isnan(one["se"])


def test_pairing_removes_the_shared_spread():
    """Two rows that share each image's difficulty h_i (sd 20) and differ by 0.3 nats plus small
    noise: the paired SE sees only the noise, the unpaired one the whole spread; both agree with
    their closed forms (sd 0.5·√2 / √n and ≈ 20·√2 / √n)."""
    rng = np.random.default_rng(1)
    n = 4000
    h = rng.normal(0, 20, n)
    a, b = h + 0.3 + rng.normal(0, 0.5, n), h + rng.normal(0, 0.5, n)
    out = paired_difference(a, b)
    assert out["se"] < out["se_unpaired"] / 20
    assert out["se"] == pytest.approx(0.5 * math.sqrt(2) / math.sqrt(n), rel=0.05)
    assert out["se_unpaired"] == pytest.approx(20 * math.sqrt(2) / math.sqrt(n), rel=0.05)
    assert abs(out["delta"] - 0.3) < 4 * out["se"]  # a difference the unpaired SE could not resolve
    assert 0.3 < 2 * out["se_unpaired"]


def test_table_pairs_every_row_better_first():
    rows = {"vae": torch.tensor([-90.0, -80.0, -85.0]), "hvae": torch.tensor([-88.0, -79.0, -86.0]),
            "vdm": torch.tensor([-95.0, -81.0, -90.0])}
    table = paired_table(rows, "elbo")
    assert [(r["a"], r["b"]) for r in table] == [("hvae", "vae"), ("vae", "vdm"), ("hvae", "vdm")]
    for r in table:
        assert r["bound"] == "elbo" and r["n"] == 3 and r["delta"] >= 0
        expected = paired_difference(rows[r["a"]], rows[r["b"]])
        assert {k: r[k] for k in expected} == expected
    first = paired_table(rows, "iwae", better_first=False)
    assert [(r["a"], r["b"]) for r in first] == [("vae", "hvae"), ("vae", "vdm"), ("hvae", "vdm")]
    assert first[0]["delta"] == pytest.approx(-table[0]["delta"]) and first[0]["se"] == pytest.approx(table[0]["se"])
    assert first[0]["share_a_gt_b"] == pytest.approx(1 / 3)


def test_bad_input_is_a_clear_value_error():
    with pytest.raises(ValueError, match="must hold the same images: 3 values against 2"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"row 'b'.*row 'c'.*same images: 3 values against 4|"
                                         r"row 'c'.*row 'b'.*same images"):
        paired_table({"b": [1.0, 2.0, 3.0], "c": [1.0, 2.0, 3.0, 4.0]}, "elbo")
    with pytest.raises(ValueError, match="at least two rows, got 1"):
        paired_table({"only": [1.0, 2.0]}, "elbo")
    with pytest.raises(ValueError, match="vector of per-image values, got shape"):
        paired_difference(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="empty"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="1 non-finite"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])
