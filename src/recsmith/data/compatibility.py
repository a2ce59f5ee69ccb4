"""Does an experiment fit a dataset? Checked once the dataset's schema is known, before
any training starts; what fits is the model family's to say."""

from __future__ import annotations

from recsmith.data.schema import DatasetSchema
from recsmith.plugins import family_of


def check_experiment_fits(cfg, schema: DatasetSchema) -> None:
    """A ConfigError naming the key when the config asks for what the dataset lacks."""
    family_of(cfg).check_dataset(cfg, schema)
