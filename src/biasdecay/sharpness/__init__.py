"""Sharpness measures: connectivity sharpness and its baselines (Tr(H), λmax(H), Fisher-Rao).

Import the functions from :mod:`biasdecay` (``bd.connectivity_sharpness`` ...) or from the
submodules; this package keeps its import light.
"""
