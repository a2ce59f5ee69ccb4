"""Does an experiment fit a dataset? Checked once the dataset's schema is known, before
any training starts."""

from __future__ import annotations

from recsmith.data.schema import DatasetSchema
from recsmith.errors import ConfigError, did_you_mean
from recsmith.tasks import esmm_pair


def check_experiment_fits(cfg, schema: DatasetSchema) -> None:
    """A ConfigError naming the key when the config asks for what the dataset lacks."""
    sequence_data = schema.meta.get("view") == "sequence"
    if cfg.model.family == "sequential" or sequence_data:
        if cfg.model.family != "sequential" or not sequence_data:
            raise ConfigError(f"model.family: '{cfg.model.family}' does not fit dataset '{schema.name}' "
                              f"(view {schema.meta.get('view', 'tabular')}); sequential models need "
                              "data.options.view: sequence, and sequence data needs model.family: sequential")
        return
    tasks = schema.task_specs
    for head in cfg.model.enabled_heads:
        if head not in tasks:
            raise ConfigError(
                f"model.enabled_heads: dataset '{schema.name}' has no task '{head}' "
                f"(its tasks: {', '.join(tasks)}){did_you_mean(head, tasks)}"
            )
    heads = set(cfg.model.enabled_heads)
    if {"ctr", "cvr"} <= heads and esmm_pair(tasks) is None:
        raise ConfigError(f"model.enabled_heads: in dataset '{schema.name}' cvr is not observed on "
                          "ctr's positives, so ctr and cvr do not form a funnel")
    if cfg.data.train_subset == "clicked" and not tasks[cfg.model.enabled_heads[0]].observed_when:
        raise ConfigError(f"data.train_subset: task '{cfg.model.enabled_heads[0]}' of dataset "
                          f"'{schema.name}' is observed on every row; use 'all'")
    key = cfg.runtime.best_selection.primary_key
    if key == "auc_cvr_entire" and "conversion_if_clicked" not in schema.truth:
        raise ConfigError(f"runtime.best_selection.primary_key: auc_cvr_entire needs the synthetic "
                          f"funnel's truth columns, which dataset '{schema.name}' does not have")
