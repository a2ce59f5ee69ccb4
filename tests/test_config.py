"""Config loading: extends, overrides, and one clear error per mistake."""

import pytest
import yaml

from recsmith.config.loader import load_experiment, parse_overrides
from recsmith.errors import ConfigError

from conftest import REPO

E3 = REPO / "configs" / "experiments" / "mtl_funnel" / "E3_deepfm_mmoe_esmm.yaml"


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    return str(info.value)


def test_extends_merges_parents_then_child_then_overrides(tmp_path):
    cfg = load_experiment(E3, parse_overrides(["model.mmoe.num_experts=6", "runtime.seed=7"]))
    assert cfg.model.mtl == "mmoe" and cfg.model.esmm.enabled  # from E3 itself
    assert cfg.model.deep_hidden_dims == [256, 128]  # from the base
    assert cfg.model.section("mmoe").num_experts == 6 and cfg.runtime.seed == 7  # from --set
    assert cfg.lr_scheduler.total_steps == cfg.runtime.max_train_steps


def test_override_values_are_read_as_yaml():
    assert parse_overrides(["a=1", "b=[1, 2]", "c=true", "d=x", "e=0.5"]) == \
        {"a": 1, "b": [1, 2], "c": True, "d": "x", "e": 0.5}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_overrides(["no_equals_sign"])


def test_unknown_key_suggests_the_right_one(tmp_path):
    message = error_of(E3, {"model.mmoe.num_expert": 8})
    assert message == ("config error: model.mmoe.num_expert: unknown key (did you mean 'num_experts'?)"
                       " (in --set)")
    child = write(tmp_path / "c.yaml", {"extends": str(E3), "runtime": {"max_train_step": 5}})
    message = error_of(child)
    assert "runtime.max_train_step: unknown key (did you mean 'max_train_steps'?)" in message
    assert "c.yaml" in message


def test_wrong_type_names_key_and_value():
    assert "runtime.max_train_steps: expected a whole number, got 'many'" in \
        error_of(E3, {"runtime.max_train_steps": "many"})
    assert "model.esmm.enabled: expected true or false, got 'yes please'" in \
        error_of(E3, {"model.esmm.enabled": "yes please"})


def test_value_out_of_range():
    assert "data.batch_size: must be ≥ 1, got 0" in error_of(E3, {"data.batch_size": 0})
    assert "data.synthetic.click_rate: must be < 1.0, got 1.5" in error_of(E3, {"data.synthetic.click_rate": 1.5})


def test_unknown_structure_lists_choices_and_suggests():
    message = error_of(E3, {"model.mtl": "mmeo"})
    assert "model.mtl: unknown structure 'mmeo'" in message
    assert "did you mean 'mmoe'?" in message and "sharedbottom" in message


def test_cross_field_rules():
    assert "model.esmm.enabled: ESMM trains a funnel pair of two heads" in \
        error_of(E3, {"model.enabled_heads": ["ctr"], "model.mtl": "single"})
    assert "model.mtl 'single' takes 1 head, got model.enabled_heads ['ctr', 'cvr']" in error_of(E3, {"model.mtl": "single"})
    assert "model.esmm.lambda_cvr_aux: ESMM v1 has no auxiliary CVR loss" in error_of(E3, {"model.esmm.version": "v1"})
    assert "runtime.best_selection.primary_key: 'auc_cvrr' is not a metric" in \
        error_of(E3, {"runtime.best_selection.primary_key": "auc_cvrr"})
    assert "lr_scheduler.total_steps (10) is shorter than runtime.max_train_steps" in \
        error_of(E3, {"lr_scheduler.total_steps": 10})
    assert "negative down-sampling must be off" in error_of(E3, {"data.neg_keep_prob_train": 0.5})
    assert "runtime.best_selection.mode: 'loss' is lower is better, so the mode must be 'min'" in \
        error_of(E3, {"runtime.best_selection.primary_key": "loss"})
    assert load_experiment(E3, {"runtime.best_selection.primary_key": "logloss_ctcvr",
                                "runtime.best_selection.mode": "min"}).runtime.best_selection.mode == "min"
    assert error_of(E3, {"data.source": "dir"}) == "config error: data.path: required when data.source is 'dir'"
    assert "model.ple.shared_num_experts is 3 but model.ple.experts.shared lists 4" in error_of(
        REPO / "configs/experiments/mtl_funnel/E5_deepfm_ple_lite_hetero_esmm.yaml", {"model.ple.shared_num_experts": 3})


def test_file_problems(tmp_path):
    assert "config file not found" in error_of(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  mtl: [unclosed\n")
    assert "invalid YAML" in error_of(bad)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write(a, {"extends": "b.yaml"})
    write(b, {"extends": "a.yaml"})
    assert "circular extends" in error_of(a)
    with pytest.raises(ConfigError, match="'runtime.seed' is a value, not a section"):
        load_experiment(E3, {"runtime.seed.x": 1})


def test_configs_written_before_esmm_moved_still_load(tmp_path):
    """use_esmm / esmm at the top level and model.tasks: what run dirs and bundles made before
    hold; read with the keys in their new places (model.esmm, model.enabled_heads)."""
    old = write(tmp_path / "old.yaml", {"use_esmm": True, "esmm": {"lambda_cvr_aux": 0.3}, "runtime": {
        "best_selection": {"primary_key": "auc_ctcvr"}}, "model": {"mtl": "mmoe", "enabled_heads": ["ctr", "cvr"],
                                                                   "tasks": ["ctr", "cvr"]}})
    cfg = load_experiment(old)
    assert cfg.model.esmm.enabled and cfg.model.esmm.lambda_cvr_aux == 0.3
    assert "use_esmm" not in cfg.model_dump() and "tasks" not in cfg.model_dump()["model"]
    assert "model.tasks ['ctr'] differs from model.enabled_heads" in error_of(old, {"model.tasks": ["ctr"]})


def test_a_section_belongs_to_a_structure_with_settings():
    assert "model.mmeo: unknown key (did you mean 'mmoe'?)" in error_of(E3, {"model.mmeo": {"num_experts": 2}})
    assert "model.sharedbottom: unknown key" in error_of(E3, {"model.sharedbottom": {"x": 1}})
    assert "model.ple.gate_type: unknown gate type" in error_of(E3, {"model.ple.gate_type": "softmaxx"})
