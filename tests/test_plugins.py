"""Plug-ins: a new multi-task structure with its own config section, and a toy model family,
both defined in this file alone and trained through `recsmith train` (a config's
`plugins:` names this file; nothing under src/ knows them).

This module is imported twice: by pytest, and by `recsmith train` in a child process as
the plug-in. Both registrations below therefore run in a fresh process each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import Field
from torch import nn

from recsmith.config.schema import ModelSection, Strict
from recsmith.data.batches import TrainStream, load_split
from recsmith.data.schema import DatasetSchema
from recsmith.families.base import Family
from recsmith.models.structures import STRUCTURES
from recsmith.plugins import FAMILIES
from recsmith.train.checkpoint import load_checkpoint
from recsmith.train.evaluate import evaluate
from recsmith.train.losses import MultiTaskLoss

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
BASE = REPO / "configs" / "base" / "mtl_funnel.yaml"
TINY = {"data": {"synthetic": {"rows": 30000, "click_rate": 0.2, "conversion_rate": 0.3}, "batch_size": 256,
                 "eval_batch_size": 4096},
        "runtime": {"max_train_steps": 40, "eval_every_steps": 20, "log_every_steps": 10},
        "lr_scheduler": {"total_steps": 40, "warmup_steps": 5}}


# ---------------------------------------------------------------- a new structure
class GatedSumConfig(Strict):
    """`model.gated_sum`: each task mixes a private projection and the shared input by a gate."""

    hidden_dim: int = Field(32, ge=1)
    per_task_gate: bool = True


class GatedSum(nn.Module):
    config = GatedSumConfig
    min_heads, max_heads = 2, 4

    @classmethod
    def check(cls, section: GatedSumConfig, heads: list[str]) -> None:
        if not section.per_task_gate and len(heads) > 2:
            raise ValueError("model.gated_sum.per_task_gate: a shared gate serves two heads at most")

    def __init__(self, in_dim: int, tasks: list[str], section: GatedSumConfig, dropout: float = 0.0):
        super().__init__()
        self.tasks = list(tasks)
        self.private = nn.ModuleDict({t: nn.Linear(in_dim, section.hidden_dim) for t in tasks})
        self.shared = nn.Linear(in_dim, section.hidden_dim)
        self.gates = nn.ModuleDict({t: nn.Linear(in_dim, 1) for t in (tasks if section.per_task_gate else ["all"])})
        self.out_dims = {t: section.hidden_dim for t in tasks}
        self.gate_experts: dict[str, list[str]] = {}

    def forward(self, h: torch.Tensor):
        shared = torch.relu(self.shared(h))  # [B, H']
        out = {}
        for t in self.tasks:
            g = torch.sigmoid(self.gates[t if t in self.gates else "all"](h))  # [B, 1]
            out[t] = g * torch.relu(self.private[t](h)) + (1 - g) * shared
        return out, {}


# ---------------------------------------------------------------- a toy family
class LogRegConfig(Strict):
    heads: list[str] = ["ctr", "cvr"]
    embedding_dim: int = Field(4, ge=1)


class ToyModelConfig(ModelSection):
    model_config = ModelSection.model_config | {"extra": "forbid"}
    family: str = "toy_logreg"
    toy_logreg: LogRegConfig = Field(default_factory=LogRegConfig)


class LogReg(nn.Module):
    """One logistic regression per head over summed id embeddings and the dense values."""

    def __init__(self, schema: DatasetSchema, heads: list[str], dim: int):
        super().__init__()
        self.tasks, self.gate_experts = list(heads), {}
        self.offsets = torch.tensor([0, *torch.tensor(schema.vocab_sizes).cumsum(0)[:-1].tolist()])
        self.table = nn.Embedding(sum(schema.vocab_sizes), dim, sparse=True)
        self.heads = nn.ModuleDict({h: nn.Linear(dim + len(schema.dense), 1) for h in heads})

    def sparse_parameters(self):
        return [self.table.weight]

    def dense_parameters(self):
        return list(self.heads.parameters())

    def forward(self, sparse, dense, with_gates: bool = False):
        x = torch.cat([self.table(sparse.long() + self.offsets).sum(1), dense], dim=1)
        logits = {h: layer(x).squeeze(-1) for h, layer in self.heads.items()}
        return (logits, {}) if with_gates else logits


class LogRegSetup:
    def __init__(self, cfg, dataset_dir: Path, device):
        self.cfg, self.device = cfg, device
        self.schema = DatasetSchema.load(dataset_dir)
        section = cfg.model.toy_logreg
        torch.manual_seed(cfg.runtime.seed)
        self.model = LogReg(self.schema, section.heads, section.embedding_dim)
        self.loss_fn = MultiTaskLoss([self.schema.task_specs[h] for h in section.heads])
        self.valid = load_split(dataset_dir, self.schema, "valid")
        self.stream = TrainStream(load_split(dataset_dir, self.schema, "train", with_columns=False),
                                  cfg.data.batch_size, seed=cfg.runtime.seed)

    def describe(self) -> str:
        return "a logistic regression per head"

    def evaluate_valid(self, model):
        return evaluate(model, self.loss_fn, self.valid, 4096, self.device, self.cfg.runtime.best_selection.primary_key)

    def final_evaluation(self, run, dataset_dir: Path) -> dict:
        best = load_checkpoint(run.ckpt_best)
        self.model.load_state_dict(best["model"])
        test = load_split(dataset_dir, self.schema, "test")
        metrics, _ = evaluate(self.model, self.loss_fn, test, 4096, self.device, self.cfg.runtime.best_selection.primary_key)
        return {"best_step": best["step"], "test": metrics, "test_rows": len(test)}


class LogRegFamily(Family):
    name = "toy_logreg"
    config = ToyModelConfig

    def selectable_metrics(self, cfg):
        heads = cfg.model.toy_logreg.heads
        return [f"auc_{h}" for h in heads] + ["loss"], f"heads {heads}"

    def setup(self, cfg, dataset_dir: Path, device):
        return LogRegSetup(cfg, dataset_dir, device)

    def key_hyperparameters(self, cfg) -> dict:
        return {"model.toy_logreg.embedding_dim": cfg.model.toy_logreg.embedding_dim}


if "gated_sum" not in STRUCTURES:  # pytest imports this module once, the plug-in loader once per process
    STRUCTURES.register("gated_sum")(GatedSum)
if "toy_logreg" not in FAMILIES:
    FAMILIES.register("toy_logreg")(LogRegFamily())


# ------------------------------------------------------------------------ tests
def train(tmp_path: Path, model: dict, primary_key: str, base: Path | None = BASE) -> subprocess.CompletedProcess:
    config = {"name": "plugin", "plugins": [str(HERE)], **TINY, "model": model,
              "runtime": {**TINY["runtime"], "best_selection": {"primary_key": primary_key}},
              **({"extends": str(base)} if base else {})}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "recsmith", "train", str(tmp_path / "exp.yaml"), "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


@pytest.mark.slow
def test_a_structure_defined_in_a_test_file_trains_through_the_cli(tmp_path):
    done = train(tmp_path, {"mtl": "gated_sum", "gated_sum": {"hidden_dim": 16}, "esmm": {"enabled": True}},
                 "auc_ctcvr")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0.0 < report["test"]["auc_ctcvr"] < 1.0 and report["best_step"] in (20, 40)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["gated_sum"] == {"hidden_dim": 16, "per_task_gate": True}
    state = torch.load(tmp_path / "run" / "ckpt_best.pt", weights_only=True)["model"]
    assert state["structure.shared.weight"].shape[0] == 16  # the section reached the structure


def test_a_structure_section_is_checked_by_the_structure(tmp_path):
    done = train(tmp_path, {"mtl": "gated_sum", "gated_sum": {"hidden_dim": 0}}, "auc_ctr")
    assert done.returncode == 2 and "model.gated_sum.hidden_dim: must be ≥ 1, got 0" in done.stderr
    done = train(tmp_path, {"mtl": "gated_sum", "gated_sum": {"hidden_dims": 8}}, "auc_ctr")
    assert "model.gated_sum.hidden_dims: unknown key (did you mean 'hidden_dim'?)" in done.stderr
    done = train(tmp_path, {"mtl": "gated_sum", "enabled_heads": ["ctr"]}, "auc_ctr")
    assert "model.mtl 'gated_sum' takes at least 2 heads" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_family_defined_in_a_test_file_trains_through_the_cli(tmp_path):
    done = train(tmp_path, {"family": "toy_logreg", "toy_logreg": {"heads": ["ctr", "cvr"], "embedding_dim": 3}},
                 "auc_ctr", base=None)  # the ranking base's model: keys are not this family's
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert {"auc_ctr", "auc_cvr", "auc_ctcvr", "logloss_cvr"} <= set(report["test"])
    assert report["precision"]["score"] == "fp32" and report["steps"] == 40
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == {
        "family": "toy_logreg", "toy_logreg": {"heads": ["ctr", "cvr"], "embedding_dim": 3}}


def test_an_unknown_family_or_a_missing_plugin_is_one_clear_line(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"extends": str(BASE), "model": {"family": "toy_logrgg"}}))
    done = subprocess.run([sys.executable, "-m", "recsmith", "train", str(tmp_path / "exp.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "model.family: unknown model family 'toy_logrgg'" in done.stderr
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"extends": str(BASE), "plugins": ["nowhere.py"]}))
    done = subprocess.run([sys.executable, "-m", "recsmith", "train", str(tmp_path / "exp.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "plugins: file not found" in done.stderr and "nowhere.py" in done.stderr
