"""Every bad input is one clear line naming the key or path, a non-zero exit, no traceback,
and nothing written."""

import pytest
import yaml

from conftest import CHAIN, REPO, run_cli, tiny_chain_file

E3 = REPO / "configs" / "experiments" / "mtl_funnel" / "E3_deepfm_mmoe_esmm.yaml"


def assert_one_clean_line(result, expected: str):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize("override, expected", [
    ("model.mmoe.num_expert=8", "config error: model.mmoe.num_expert: unknown key (did you mean 'num_experts'?)"),
    ("runtime.max_train_steps=lots", "config error: runtime.max_train_steps: expected a whole number, got 'lots'"),
    ("data.batch_size=0", "config error: data.batch_size: must be ≥ 1, got 0"),
    ("model.mtl=plee", "config error: model.mtl: unknown structure 'plee'"),
    ("model.ple.gate_type=softmax", "config error: model.ple.gate_type: unknown gate type 'softmax'"),
])
def test_train_rejects_bad_config_before_training(tmp_path, override, expected):
    run_dir = tmp_path / "run"
    result = run_cli("train", E3, "--run-dir", run_dir, "--set", override)
    assert_one_clean_line(result, expected)
    assert not run_dir.exists()


def test_missing_dataset_path(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", E3, "--run-dir", run_dir, "--set", "data.source=dir",
                     "--set", f"data.path={tmp_path / 'nowhere'}")
    assert_one_clean_line(result, f"data error: data.path: dataset directory not found: {tmp_path / 'nowhere'}")
    assert not run_dir.exists()


def test_missing_config_file(tmp_path):
    assert_one_clean_line(run_cli("train", tmp_path / "missing.yaml"), "config error: config file not found")


def test_chain_with_a_differing_locked_field(tmp_path):
    exp = tmp_path / "E3_bigger_batch.yaml"
    exp.write_text(yaml.safe_dump({"extends": str(E3), "data": {"batch_size": 2048}}))
    spec = yaml.safe_load(CHAIN.read_text())
    spec["base"] = str(CHAIN.parent / spec["base"])
    for e in spec["experiments"]:
        e["config"] = str(exp) if e["id"] == "E3" else str(CHAIN.parent / e["config"])
    spec["output_dir"] = str(tmp_path / "out")
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump(spec))
    for command in (["chain", "validate", chain], ["chain", "run", chain]):
        result = run_cli(*command)
        assert_one_clean_line(result, "chain error: locked field data.batch_size differs: E3 has 2048, "
                                      "the base has 1024 (set in ")
        assert "E3_bigger_batch.yaml" in result.stderr
    assert not (tmp_path / "out").exists()


def test_chain_rejects_bad_overrides_and_unknown_ids(tmp_path):
    chain = tiny_chain_file(tmp_path)
    result = run_cli("chain", "run", chain, "--set", "optim.dense.lr=-1")
    assert result.returncode == 2 and "optim.dense.lr: must be > 0.0, got -1" in result.stderr
    assert "Traceback" not in result.stderr
    assert_one_clean_line(run_cli("chain", "run", chain, "--only", "E33"),
                          "chain error: --only: unknown experiment 'E33'")
    assert not (tmp_path / "out").exists()


def test_chain_validate_prints_locked_fields_and_diffs():
    paper = run_cli("chain", "validate", CHAIN.with_name("mtl_funnel_paper.yaml"))
    assert paper.returncode == 0, paper.stderr
    assert "✓ runtime.max_train_steps: 40000" in paper.stdout and "✓ runtime.amp: True" in paper.stdout
    result = run_cli("chain", "validate", CHAIN)
    assert result.returncode == 0, result.stderr
    assert "7 experiments, all valid" in result.stdout
    assert "✓ data.batch_size: 1024" in result.stdout
    assert "model.mtl: 'sharedbottom' → 'mmoe'" in result.stdout
    assert "model.ple.hetero_enabled: (absent) → True" in result.stdout  # E5's own section


@pytest.mark.parametrize("args, expected", [
    (["bogus"], "No such command 'bogus'"),
    (["chain", "run"], "Missing argument 'chain'"),
    (["train", "x.yaml", "--bogus"], "No such option: --bogus"),
])
def test_usage_errors_are_short(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
