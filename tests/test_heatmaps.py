"""Heatmap statistics against values computed by hand."""

import math

import numpy as np

from audit.scanner.heatmap_stats import cell_box_overlap, grid_stats


def test_single_hot_cell():
    g = np.zeros((1, 4, 4))
    g[0, 1, 2] = 3.0
    s = grid_stats(g)
    assert s["peak_x"][0] == 2.5 / 4 and s["peak_y"][0] == 1.5 / 4
    assert s["entropy"][0] == 0.0
    assert s["top10_mass"][0] == 1.0
    assert s["centre_mass"][0] == 1.0  # cell centre (0.625, 0.375) is in the middle half
    assert s["border_mass"][0] == 0.0


def test_uniform_grid():
    s = grid_stats(np.ones((1, 7, 7)))
    assert math.isclose(s["entropy"][0], 1.0)
    assert math.isclose(s["top10_mass"][0], 5 / 49)  # ceil(4.9) = 5 cells
    assert math.isclose(s["border_mass"][0], 24 / 49)
    # centres (i + .5) / 7 within [.25, .75]: i = 2, 3, 4 -> 3 x 3 cells
    assert math.isclose(s["centre_mass"][0], 9 / 49)


def test_two_cells_entropy():
    g = np.zeros((1, 2, 2))
    g[0, 0, 0] = g[0, 1, 1] = 1.0
    assert math.isclose(grid_stats(g)["entropy"][0], math.log(2) / math.log(4))


def test_box_mass_uses_fractional_cell_overlap():
    g = np.ones((1, 2, 2))
    boxes = np.array([[0.0, 0.0, 0.75, 0.5]])  # covers cell (0,0) fully and half of cell (0,1)
    s = grid_stats(g, boxes)
    assert math.isclose(s["box_mass"][0], (1 + 0.5) / 4)
    assert s["peak_in_box"][0] is True or s["peak_in_box"][0] == True  # noqa: E712 - numpy bool
    ov = cell_box_overlap(2, 2, boxes)
    assert np.allclose(ov[0], [[1.0, 0.5], [0.0, 0.0]])


def test_peak_outside_box_and_missing_box():
    g = np.zeros((2, 4, 4))
    g[:, 3, 3] = 1.0
    boxes = np.array([[0.0, 0.0, 0.5, 0.5], [np.nan] * 4])
    s = grid_stats(g, boxes)
    assert s["peak_in_box"][0] == False  # noqa: E712
    assert s["box_mass"][0] == 0.0
    assert s["peak_in_box"][1] is None and math.isnan(s["box_mass"][1])


def test_all_zero_grid_has_no_statistics():
    s = grid_stats(np.zeros((1, 3, 3)), np.array([[0, 0, 1, 1.0]]))
    assert all(math.isnan(s[k][0]) for k in ("peak_x", "entropy", "top10_mass", "centre_mass", "box_mass"))
    assert s["peak_in_box"][0] is None
