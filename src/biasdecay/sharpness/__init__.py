"""Sharpness measures: connectivity sharpness and its baselines (Tr(H), λmax(H), Fisher-Rao)."""
