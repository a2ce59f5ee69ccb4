"""Gradient-boosted trees on the explicit features (LightGBM) and the DIN + LightGBM hybrid."""
