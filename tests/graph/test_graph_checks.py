"""Checks on the DAG (:mod:`hlvm.graph.checks`): ``TraceMeanField_ELBO``'s exactness condition
(De Sousa Ribeiro & Glocker, Fig. 2: top-down guides qualify, bottom-up ones do not) and the
direction of the guide, on the zoo models and the README's user-defined hierarchy.
"""

import pytest

import hlvm
from hlvm.graph.checks import check_mean_field, guide_direction
from hlvm.graph.extract import example_input

from graph_cases import graphs, small


@pytest.mark.parametrize("name", ["vae", "hvae-td", "hvae-td-diffusion", "hvae-td-denoiser", "vdm"])
def test_mean_field_condition_accepts_top_down_pairs(name):
    check = check_mean_field(*graphs(name))
    assert check.ok and check and check.site is None and check.violations == {}
    assert "is exact" in check.message


def test_mean_field_condition_rejects_bottom_up_hvae():
    check = check_mean_field(*graphs("hvae-bu"))
    assert not check.ok and not check
    assert check.site == "z_1" and check.violations == {"z_1": ("z_2",)}
    assert "'z_1'" in check.message and "'z_2'" in check.message


def test_mean_field_condition_rejects_user_hierarchy_naming_z():
    # the guide samples z before the u-chain, and z's model parent u_0 is a guide descendant of z
    check = check_mean_field(*graphs("user"))
    assert not check.ok and check.site == "z" and check.violations == {"z": ("u_0",)}


def test_mean_field_accepts_a_module_or_programs():
    m = small("hvae-bu")
    assert check_mean_field(m).site == "z_1"
    assert check_mean_field(m.model, m.guide, example_input(m)).site == "z_1"
    assert hlvm.check_mean_field(small("vdm")).ok


@pytest.mark.parametrize("name, direction", [("vae", "top-down"), ("hvae-td", "top-down"), ("vdm", "top-down"),
                                             ("hvae-td-diffusion", "top-down"), ("hvae-bu", "bottom-up"),
                                             ("user", "mixed")])
def test_guide_direction(name, direction):
    assert guide_direction(*graphs(name)) == direction
