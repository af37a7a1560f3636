"""Figures from run files (`eos-probe plot`): see :mod:`eos_probe.plot.figures`."""
from __future__ import annotations

from .figures import KINDS, band_figure, build_figure, make_figure
from .panels import draw_bands, draw_commutator, draw_lambda, draw_loss, draw_margin
from .spectrum import density_grid, draw_spectrum
from .style import load_runs

__all__ = ["KINDS", "band_figure", "build_figure", "density_grid", "draw_bands", "draw_commutator", "draw_lambda",
           "draw_loss", "draw_margin", "draw_spectrum", "load_runs", "make_figure"]
