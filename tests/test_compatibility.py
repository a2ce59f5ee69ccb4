"""An experiment that asks a dataset for what it lacks fails before training, naming the key."""

import pytest

from recsmith.config.loader import validate_experiment
from recsmith.data.compatibility import check_experiment_fits
from recsmith.data.schema import DatasetSchema, SparseField
from recsmith.errors import ConfigError
from recsmith.tasks import FUNNEL_TASKS, TaskSpec

CENSUS_LIKE = DatasetSchema(
    name="census_like", source="test", sparse=[SparseField("education", 10)], dense=[],
    labels=["income_50k", "never_married"],
    tasks=[TaskSpec("income", "income_50k"), TaskSpec("marital", "never_married")],
)
FUNNEL = DatasetSchema(name="funnel", source="test", sparse=[SparseField("user", 10)], dense=[],
                       labels=["click", "conversion"], tasks=list(FUNNEL_TASKS))


def config(**extra):
    base = {"runtime": {"best_selection": {"primary_key": "auc_ctr"}}}
    return validate_experiment({**base, **extra})


def test_heads_must_be_tasks_of_the_dataset():
    with pytest.raises(ConfigError, match="dataset 'census_like' has no task 'ctr' \\(its tasks: income, marital\\)"):
        check_experiment_fits(config(), CENSUS_LIKE)
    two_tasks = config(model={"mtl": "mmoe", "enabled_heads": ["income", "marital"], "tasks": ["income", "marital"]},
                       runtime={"best_selection": {"primary_key": "auc_marital"}})
    check_experiment_fits(two_tasks, CENSUS_LIKE)  # any named tasks train


def test_clicked_subset_needs_a_task_observed_on_a_subset():
    cvr_only = config(data={"train_subset": "clicked"},
                      model={"mtl": "single", "enabled_heads": ["cvr"], "tasks": ["cvr"]},
                      runtime={"best_selection": {"primary_key": "auc_cvr"}})
    check_experiment_fits(cvr_only, FUNNEL)
    ctr_only = config(data={"train_subset": "clicked"},
                      model={"mtl": "single", "enabled_heads": ["ctr"], "tasks": ["ctr"]})
    with pytest.raises(ConfigError, match="data.train_subset: task 'ctr' .* is observed on every row"):
        check_experiment_fits(ctr_only, FUNNEL)


def test_entire_space_cvr_needs_the_synthetic_truth():
    cfg = config(use_esmm=True, runtime={"best_selection": {"primary_key": "auc_cvr_entire"}})
    with pytest.raises(ConfigError, match="auc_cvr_entire needs the synthetic funnel's truth columns"):
        check_experiment_fits(cfg, FUNNEL)
