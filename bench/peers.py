"""The peer libraries for bench/throughput.py: torch-rechub 0.9.0 and DeepCTR-Torch 0.3.0
trained on the rows recsmith trains on, each through its own documented data path and
its own training step (`pip install -e '.[bench]'`).

    build(exp_id, dataset_dir, cfg) -> {"torch-rechub": (step, batches),
                                        "deepctr-torch": (step, batches)}

`batches` is an endless iterator over the peer's own training DataLoader (a new pass,
reshuffled, each time the loader is exhausted); `step(batch)` does exactly one optimizer
step the way the peer's trainer does it and returns the loss as a float.

Data: `dataset_dir/train.parquet` is read with pandas (the feature columns and the
labels; never the synthetic truth columns) and handed to each peer the way its examples
do it. Sparse fields become the peer's sparse features (`vocab_size` from schema.json,
embedding dim `cfg.embedding.default_embedding_dim`); the float32 dense columns become
its dense features wherever the model accepts them.

  torch-rechub   `x = {name: df[name].values}`, `y = df[labels].values` →
                 `DataGenerator(x, y).generate_dataloader(batch_size=1024)`; the train
                 loader (TorchDataset: one dict per row, default_collate; shuffle=True,
                 num_workers=0). The step replicates the loop body of
                 `CTRTrainer.train_one_epoch` (E0a) or `MTLTrainer.train_one_epoch`
                 (E2-E4) on a trainer built with its defaults: Adam over
                 `model.parameters()`, lr 1e-3, weight_decay 1e-5, BCELoss on
                 probabilities, the (all-zero by default) RegularizationLoss pass,
                 `model.zero_grad(); loss.backward(); optimizer.step()` and the
                 per-batch `loss.item()` calls. The body is replicated rather than the
                 trainer called because `train_one_epoch` wraps the loader in tqdm and
                 runs a whole epoch per call.
  deepctr-torch  `x = {name: df[name]}` (its examples' feature dict), `y =
                 df[labels].values`, prepared exactly as `BaseModel.fit` does:
                 columns in `model.feature_index` order, expand_dims, one
                 `np.concatenate` (float64, since int32 ids meet float32 dense values)
                 → `TensorDataset` → `DataLoader(shuffle=True, batch_size=1024)`, built
                 once as one `fit` call builds it and iterated anew per epoch (as fit's
                 epoch loop does). `model.compile("adam", "binary_crossentropy")` (a
                 list of two for multi-task): `torch.optim.Adam(model.parameters())`
                 with lr 1e-3, no weight decay, `F.binary_cross_entropy(...,
                 reduction="sum")` per task. The step replicates the loop body of
                 `BaseModel.fit` (fit itself runs whole epochs under tqdm): `.float()`
                 casts, forward, `optim.zero_grad()`, summed task losses +
                 `get_regularization_loss()` (L2 1e-5 over every embedding table, the
                 model default) + `aux_loss`, the two `.item()` calls, backward, step.
                 No metrics are compiled, so fit's per-batch metric branch (sklearn
                 log_loss/AUC on every batch when `metrics=[...]`) does not run.
                 Importing deepctr_torch starts a background thread that asks PyPI for
                 the latest version (its `check_version`); it is done before timing.

Models per structure, and every way they differ from recsmith's (`cfg`):

All structures, both peers:
  * recsmith's model is a DeepFM *backbone* (FM first-order sum, FM pairwise vector
    projected to 16, deep MLP [256, 128] over embeddings + dense) whose 145-wide output
    feeds the structure (shared bottom / MMoE / PLE) and per-task towers [64]. No peer
    has a DeepFM backbone under its multi-task models: their experts/towers read the
    flattened embeddings (26 × 8) plus the dense values directly.
  * recsmith: one fused embedding table with sparse gradients stepped by `optim.sparse`
    (lazy_adam, lr 1e-3, in the chain's base config: SparseAdam's update, docs/performance.md) and Adam (lr 6e-4) for the rest,
    cosine schedule with warm-up; init N(0, 0.01).
    Peers: one nn.Embedding per field with dense gradients, one Adam (lr 1e-3) over all
    parameters, no schedule; init N(0, 1e-4).
  * recsmith trains in bf16 autocast only where the CPU has native bf16 (`runtime.amp:
    auto`; fp32 on this project's machine); the peers train in fp32.
  * recsmith's losses are BCE-with-logits; the peers apply sigmoid in the model and
    use BCE on probabilities (DeepCTR: summed over the batch, not averaged).
  * torch-rechub's MLPs (experts, towers, gates) are Linear → BatchNorm1d → ReLU →
    Dropout(0) and cannot drop the BatchNorm; recsmith's and DeepCTR's are Linear →
    ReLU (DeepCTR `dnn_use_bn=False`, its default). DeepCTR's final task layers,
    gates and DeepFM's deep logit layer have no bias.

E0a  DeepFM, CTR only (label click).
  torch-rechub `models.ranking.DeepFM(deep_features=sparse + dense, fm_features=sparse,
    mlp_params={"dims": [256, 128]})`: logit = LR over the flattened FM embeddings +
    FM + MLP(→1), one sigmoid. Its "linear" part is a Linear over the 26×8 embedding
    values, not a per-value first-order weight; dense values enter only the MLP. (Its
    criteo example passes only the dense features as deep_features; the sparse fields
    are given to both parts here so the deep part sees the embeddings, as in recsmith.)
  deepctr-torch `models.DeepFM(linear = dnn = sparse + dense, dnn_hidden_units=(256,
    128))`: per-value linear weights + a dense-value linear term + FM + DNN(→1).
  Both sum three logits; recsmith concatenates [linear, projected FM vector, deep] and
    passes them through a tower [64] to the logit.

E2   shared-bottom + ESMM (click, conversion).
  Neither peer has a shared MLP bottom under ESMM: its CTR and CVR towers [64] both
    read the shared embeddings directly (the embedding is all they share).
  torch-rechub `models.multi_task.ESMM(user_features, item_features, cvr_params=
    {"dims": [64]}, ctr_params={"dims": [64]})`: sparse fields only (its ESMM takes no
    dense features; the 3 dense columns are dropped), split into user (schema entity
    user and context) and item fields only because its API asks for two lists (they
    are concatenated back). Labels in its required order [cvr = conversion, ctr =
    click, ctcvr = click·conversion]; MTLTrainer's ESMM loss BCE(ctr) + BCE(ctcvr)
    (the CVR BCE is computed, as its trainer does, but not added).
  deepctr-torch `models.ESMM(sparse + dense, tower_dnn_hidden_units=(64,),
    task_names=("ctr", "ctcvr"))`, labels [click, click·conversion], loss BCE(ctr) +
    BCE(ctcvr).
  recsmith E2: DeepFM backbone as the shared bottom, towers [64], ESMM v2 loss = BCE(ctr)
    + BCE(ctcvr) + 0.1 · BCE(cvr on clicked rows); the peers have no auxiliary CVR term.

E3   MMoE, 4 experts [128, 64], towers [64], two binary tasks (ctr on click, cvr on
     conversion) with each peer's own multi-task loss.
  torch-rechub `MMOE(sparse + dense, ["classification"] * 2, n_expert=4,
    expert_params={"dims": [128, 64]}, tower_params_list=[{"dims": [64]}] * 2)`; its
    gates are Linear → BatchNorm1d → softmax; loss (BCE_ctr + BCE_cvr) / 2.
  deepctr-torch `MMOE(sparse + dense, num_experts=4, expert_dnn_hidden_units=(128, 64),
    gate_dnn_hidden_units=(), tower_dnn_hidden_units=(64,), task_names=("ctr",
    "cvr"))`; `gate_dnn_hidden_units=()` makes its gate one bias-free Linear + softmax,
    the nearest to recsmith's linear gate (its default is a 64-unit hidden layer);
    loss BCE_ctr + BCE_cvr (sums).
  recsmith E3 trains these heads with the ESMM v2 loss (CVR through CTCVR over all
    impressions, plus 0.1 · CVR BCE on clicked rows); the peers' CVR head is a plain
    BCE on `conversion` over all impressions.

E4   PLE, one level, 4 shared + 1 specific expert per task, experts [128, 64], towers
     [64], losses as in E3.
  torch-rechub `PLE(sparse + dense, ["classification"] * 2, n_level=1,
    n_expert_specific=1, n_expert_shared=4, expert_params={"dims": [128, 64]},
    tower_params_list=[{"dims": [64]}] * 2)`; gates Linear → BatchNorm1d → softmax; at
    its last level no shared gate is computed.
  deepctr-torch `PLE(sparse + dense, shared_expert_num=4, specific_expert_num=1,
    num_levels=1, expert_dnn_hidden_units=(128, 64), gate_dnn_hidden_units=(),
    tower_dnn_hidden_units=(64,), task_names=("ctr", "cvr"))`. DeepCTR-Torch 0.3.0
    builds the shared experts with `specific_expert_num` instead of
    `shared_expert_num` (ple.py: `multi_module_list(self.num_levels, 1,
    self.specific_expert_num, ...)`), so with 4 shared and 1 specific expert its
    forward raises IndexError. `_fix_deepctr_ple` rebuilds `model.shared_experts` with
    4 experts from the same DNN class and arguments before `compile` (so the
    optimizer sees them); nothing else is changed. Its CGC also computes the shared
    gate at the last level, where the output is unused (its cost, kept).
  recsmith E4: the ESMM v2 loss as in E3, linear gates with bias.

E5   heterogeneous PLE (MLP and CrossNet-v2 experts, projections, output aligner): no
     peer implements it; `build` returns {}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

STRUCTURES = ("E0a", "E2", "E3", "E4", "E5")
BATCH_SIZE = 1024


# ------------------------------------------------------------------------- data
def _read_train(dataset_dir: Path, schema):
    """The training rows as a pandas DataFrame: sparse ids, dense values, labels."""
    import pandas as pd

    columns = schema.sparse_names + schema.dense_names + list(schema.labels)
    return pd.read_parquet(Path(dataset_dir) / "train.parquet", columns=columns)


def _endless(loader) -> Iterator:
    """Pass after pass over a DataLoader; each new pass reshuffles (RandomSampler)."""
    while True:
        yield from loader


def _homogeneous_ple(cfg):
    """cfg.model.ple, checked to be what the peers can build: one specific-expert count."""
    ple = cfg.model.ple
    counts = set(ple.specific_num_experts.values())
    if ple.hetero_enabled or len(counts) != 1:
        raise ValueError(f"the peers' PLE has one specific-expert count for every task and MLP experts only; "
                         f"got {dict(ple.specific_num_experts)}, hetero_enabled={ple.hetero_enabled}")
    return ple


def _check_labels(schema, *needed: str) -> None:
    missing = [label for label in needed if label not in schema.labels]
    if missing:
        raise ValueError(f"the peers need label columns {missing}; this dataset has {schema.labels}")


# ----------------------------------------------------------------- torch-rechub
def _rechub(exp_id: str, df, schema, cfg) -> tuple[Callable, Iterator]:
    import torch
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import ESMM, MMOE, PLE
    from torch_rechub.models.ranking import DeepFM
    from torch_rechub.trainers import CTRTrainer, MTLTrainer
    from torch_rechub.utils.data import DataGenerator

    dim = cfg.embedding.default_embedding_dim
    # fresh feature objects per model: a SparseFeature caches its nn.Embedding
    sparse = [SparseFeature(f.name, vocab_size=f.vocab_size, embed_dim=dim) for f in schema.sparse]
    dense = [DenseFeature(name) for name in schema.dense_names]
    towers = list(cfg.model.tower_hidden_dims)
    torch.manual_seed(cfg.runtime.seed)

    if exp_id == "E0a":
        model = DeepFM(deep_features=sparse + dense, fm_features=sparse,
                       mlp_params={"dims": list(cfg.model.deep_hidden_dims)})
        used, labels = sparse + dense, ["click"]
    elif exp_id == "E2":
        item = [f for f, s in zip(sparse, schema.sparse) if s.entity == "item"]
        user = [f for f in sparse if f not in item]
        if not item or not user:  # its API wants two non-empty lists; they are concatenated
            half = len(sparse) // 2
            user, item = sparse[:half], sparse[half:]
        model = ESMM(user, item, cvr_params={"dims": towers}, ctr_params={"dims": towers})
        used, labels = user + item, ["cvr_label", "ctr_label", "ctcvr_label"]  # its fixed order
    elif exp_id == "E3":
        mmoe = cfg.model.mmoe
        model = MMOE(sparse + dense, ["classification"] * 2, mmoe.num_experts,
                     expert_params={"dims": list(mmoe.expert_hidden_dims)},
                     tower_params_list=[{"dims": towers} for _ in range(2)])
        used, labels = sparse + dense, ["click", "conversion"]
    elif exp_id == "E4":
        ple = _homogeneous_ple(cfg)
        model = PLE(sparse + dense, ["classification"] * 2, n_level=ple.num_levels,
                    n_expert_specific=next(iter(ple.specific_num_experts.values())),
                    n_expert_shared=ple.shared_num_experts,
                    expert_params={"dims": list(ple.expert_hidden_dims)},
                    tower_params_list=[{"dims": towers} for _ in range(2)])
        used, labels = sparse + dense, ["click", "conversion"]
    else:
        raise ValueError(f"no torch-rechub model for {exp_id}")

    x = {f.name: df[f.name].values for f in used}
    if exp_id == "E2":
        y = np.stack([df["conversion"].values, df["click"].values,
                      df["click"].values * df["conversion"].values], axis=1)
    elif len(labels) == 1:
        y = df[labels[0]].values
    else:
        y = df[labels].values
    train_loader, _, _ = DataGenerator(x, y).generate_dataloader(batch_size=BATCH_SIZE)

    if exp_id == "E0a":
        trainer = CTRTrainer(model)  # default optimizer: Adam(lr=1e-3, weight_decay=1e-5)
        step = _rechub_ctr_step(trainer)
    else:
        task_types = ["classification"] * (3 if exp_id == "E2" else 2)
        trainer = MTLTrainer(model, task_types=task_types)
        step = _rechub_mtl_step(trainer, is_esmm=isinstance(model, ESMM))
    trainer.model.train()
    return step, _endless(train_loader)


def _rechub_ctr_step(trainer) -> Callable:
    """The loop body of `CTRTrainer.train_one_epoch` (loss_mode=True)."""
    model, device = trainer.model, trainer.device

    def step(batch) -> float:
        x_dict, y = batch
        x_dict = {k: v.to(device) for k, v in x_dict.items()}
        y = y.to(device).float()
        y_pred = model(x_dict)
        loss = trainer.criterion(y_pred, y)
        reg_loss = trainer.reg_loss_fn(model)
        loss = loss + reg_loss
        model.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        value = loss.item()  # its total_loss and epoch_loss bookkeeping
        loss.item()
        return value

    return step


def _rechub_mtl_step(trainer, is_esmm: bool) -> Callable:
    """The loop body of `MTLTrainer.train_one_epoch` (no adaptive loss weighting)."""
    model, device, n_task, loss_fns = trainer.model, trainer.device, trainer.n_task, trainer.loss_fns

    def step(batch) -> float:
        x_dict, ys = batch
        x_dict = {k: v.to(device) for k, v in x_dict.items()}
        ys = ys.to(device)
        y_preds = model(x_dict)
        loss_list = [loss_fns[i](y_preds[:, i], ys[:, i].float()) for i in range(n_task)]
        if is_esmm:
            loss = sum(loss_list[1:])  # ESMM: ctr and ctcvr only
        else:
            loss = sum(loss_list) / n_task
        reg_loss = trainer.reg_loss_fn(model)
        loss = loss + reg_loss
        model.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        values = np.array([l.item() for l in loss_list])  # its per-batch loss bookkeeping
        return float(values[1:].sum() if is_esmm else values.mean())

    return step


# ---------------------------------------------------------------- deepctr-torch
def _deepctr(exp_id: str, df, schema, cfg) -> tuple[Callable, Iterator]:
    import torch
    import torch.utils.data as Data
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import ESMM, MMOE, PLE, DeepFM
    from torch.utils.data import DataLoader

    dim = cfg.embedding.default_embedding_dim
    columns = ([SparseFeat(f.name, vocabulary_size=f.vocab_size, embedding_dim=dim) for f in schema.sparse]
               + [DenseFeat(name, 1) for name in schema.dense_names])
    towers = tuple(cfg.model.tower_hidden_dims)
    seed = cfg.runtime.seed

    if exp_id == "E0a":
        model = DeepFM(columns, columns, dnn_hidden_units=tuple(cfg.model.deep_hidden_dims), seed=seed)
        model.compile("adam", "binary_crossentropy")
        y = df[["click"]].values
    elif exp_id == "E2":
        model = ESMM(columns, tower_dnn_hidden_units=towers, task_names=("ctr", "ctcvr"), seed=seed)
        model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"])
        y = np.stack([df["click"].values, df["click"].values * df["conversion"].values], axis=1)
    elif exp_id == "E3":
        mmoe = cfg.model.mmoe
        model = MMOE(columns, num_experts=mmoe.num_experts, expert_dnn_hidden_units=tuple(mmoe.expert_hidden_dims),
                     gate_dnn_hidden_units=(), tower_dnn_hidden_units=towers, task_names=("ctr", "cvr"), seed=seed)
        model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"])
        y = df[["click", "conversion"]].values
    elif exp_id == "E4":
        ple = _homogeneous_ple(cfg)
        model = PLE(columns, shared_expert_num=ple.shared_num_experts,
                    specific_expert_num=next(iter(ple.specific_num_experts.values())), num_levels=ple.num_levels,
                    expert_dnn_hidden_units=tuple(ple.expert_hidden_dims), gate_dnn_hidden_units=(),
                    tower_dnn_hidden_units=towers, task_names=("ctr", "cvr"), seed=seed)
        _fix_deepctr_ple(model)
        model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"])
        y = df[["click", "conversion"]].values
    else:
        raise ValueError(f"no DeepCTR-Torch model for {exp_id}")

    # BaseModel.fit's data preparation, verbatim in effect
    x = {c.name: df[c.name] for c in columns}
    x = [x[feature] for feature in model.feature_index]
    for i in range(len(x)):
        if len(x[i].shape) == 1:
            x[i] = np.expand_dims(x[i], axis=1)
    train_tensor_data = Data.TensorDataset(torch.from_numpy(np.concatenate(x, axis=-1)), torch.from_numpy(y))
    train_loader = DataLoader(dataset=train_tensor_data, shuffle=True, batch_size=BATCH_SIZE)
    model.train()
    return _deepctr_step(model), _endless(train_loader)


def _fix_deepctr_ple(model) -> None:
    """DeepCTR-Torch 0.3.0's PLE builds `specific_expert_num` shared experts per level
    where it means `shared_expert_num`; rebuild them with the same DNN and arguments."""
    from deepctr_torch.layers import DNN
    from torch import nn

    if all(len(level[0]) == model.shared_expert_num for level in model.shared_experts):
        return  # a fixed release
    hidden = model.expert_dnn_hidden_units
    model.shared_experts = nn.ModuleList([
        nn.ModuleList([nn.ModuleList([
            DNN(model.input_dim if level == 0 else hidden[-1], hidden, activation="relu", l2_reg=0,
                dropout_rate=0, use_bn=False, init_std=0.0001, device=model.device)
            for _ in range(model.shared_expert_num)])])
        for level in range(model.num_levels)])


def _deepctr_step(model) -> Callable:
    """The loop body of `BaseModel.fit` (no gpus, no metrics compiled)."""
    device, loss_func, optim = model.device, model.loss_func, model.optim
    num_tasks = getattr(model, "num_tasks", 1)

    def step(batch) -> float:
        x_train, y_train = batch
        x = x_train.to(device).float()
        y = y_train.to(device).float()
        y_pred = model(x)
        if num_tasks == 1 and y_pred.ndim > 1 and y_pred.shape[-1] == 1:
            y_pred = y_pred.squeeze(-1)
        optim.zero_grad()
        if isinstance(loss_func, list):
            loss = sum([loss_func[i](y_pred[:, i], y[:, i], reduction="sum") for i in range(num_tasks)])
        else:
            y_for_loss = y
            if y_for_loss.ndim > 1 and y_for_loss.shape[-1] == 1:
                y_for_loss = y_for_loss.squeeze(-1)
            loss = loss_func(y_pred, y_for_loss, reduction="sum")
        reg_loss = model.get_regularization_loss()
        total_loss = loss + reg_loss + model.aux_loss
        loss_value = loss.item()  # its loss_epoch and total_loss_epoch bookkeeping
        total_loss.item()
        total_loss.backward()
        optim.step()
        return loss_value / len(y)  # per-row BCE, for reading; fit accumulates the sum

    return step


# ------------------------------------------------------------------------ entry
def build(exp_id: str, dataset_dir: Path, cfg) -> dict[str, tuple[Callable, Iterator]]:
    """{peer name: (step_fn, endless batch iterator)} for one structure of the chain."""
    from recsmith.data.schema import DatasetSchema

    if exp_id not in STRUCTURES:
        raise ValueError(f"unknown structure {exp_id!r}; expected one of {STRUCTURES}")
    if exp_id == "E5":
        return {}  # heterogeneous PLE: neither peer implements it
    if cfg.data.batch_size != BATCH_SIZE:
        raise ValueError(f"the peers train with batch {BATCH_SIZE}; cfg.data.batch_size is {cfg.data.batch_size}")
    schema = DatasetSchema.load(dataset_dir)
    _check_labels(schema, "click", "conversion")
    df = _read_train(dataset_dir, schema)
    return {"torch-rechub": _rechub(exp_id, df, schema, cfg),
            "deepctr-torch": _deepctr(exp_id, df, schema, cfg)}
