"""Shipping a trained ranking model: bundles, scoring, export, registry, the HTTP service."""
