"""The built-in model families, registered in recsmith.plugins.FAMILIES on import.
The interface is recsmith.families.base.Family; docs/architecture.md has the recipe."""

from recsmith.families import ranking, sequential, text  # noqa: F401  (import registers)
