"""Backbones turn embedded fields into one shared representation `[B, out_dim]`."""

from recsmith.registry import Registry

BACKBONES: Registry[type] = Registry("backbone")

from recsmith.models.backbones import deepfm  # noqa: E402,F401  (registers "deepfm")
