"""RecBole 1.2.0 side of the sequential peer benchmark (SASRec / GRU4Rec / NARM on
MovieLens-100K). Runs INSIDE the venv made by bench/recbole/setup_env.sh; never imports
recsmith. bench/seq_peers.py calls it through subprocess and reads the JSON it writes.

    python bench/recbole/run_recbole.py --data /path/to/ml-100k --model SASRec \
        --budget-seconds 900 --max-length 50 --batch-size 2048 --epochs 1000 \
        --seed 2020 --threads 2 --out result.json [--workdir DIR]
    python bench/recbole/run_recbole.py --check-import     # the env check setup_env.sh runs

Data and split (must match recsmith's exactly):
  * every line of u.data (or u.data.gz; latin-1, tab-separated user, item, rating,
    timestamp) is one implicit interaction, no rating threshold;
  * per user the interactions are ordered by (timestamp, 0-based line number in u.data).
    Timestamps tie often, so the atomic file's `timestamp` column is the per-user rank in
    that order (0..n-1): RecBole's own sort by timestamp then reproduces the order exactly;
  * RecBole's leave-one-out by time (eval_args LS valid_and_test, order TO, group_by user):
    last item test, second-to-last valid, full ranking over all items. For sequential
    models RecBole does not mask history items in full-sort evaluation (only the padding
    id 0), so history items are not excluded.
  The split RecBole built is checked against our own computation from u.data for every
  user (test target, valid target, and the test row's history window); any mismatch
  exits non-zero.

The dataset is NOT named `ml-100k`: RecBole 1.2.0's Config forces `data_path` to its own
bundled copy (recbole/dataset_example/ml-100k, original timestamps) for that name and
loads properties/dataset/ml-100k.yaml (normalize_all: True), silently ignoring our files.
It is written as <workdir>/ml-100k-bench/ml-100k-bench.inter instead.

Budget (the same rule bench/seq_peers.py applies to recsmith): the clock counts training
epochs plus each epoch's validation evaluation, nothing else (data loading, model build
and the final test evaluation are outside it). Epochs run one at a time through the
Trainer's own `_train_epoch` / `_valid_epoch` (what `Trainer.fit` calls); the state with
the best validation NDCG@10 is kept in memory; another epoch is not started when the time
used plus the last epoch's (train + valid) time would exceed the budget, nor after
--epochs. RecBole's own early stopping (stopping_step) is not applied. The best state is
then evaluated on the test split.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import logging
import os
import platform
import sys
import time
import types
import warnings
from pathlib import Path

DATASET_NAME = "ml-100k-bench"
MODELS = ("SASRec", "GRU4Rec", "NARM")
PROTOCOL = "leave-last-out by time, full ranking over all items, history items not excluded"


def _install_stubs() -> None:
    """Stand-ins for two modules RecBole 1.2.0 imports at import time but this runner
    never uses; they are not installed in the venv (see setup_env.sh).

    * ray: `recbole/quick_start/quick_start.py` does `from ray import tune` at module
      level, and `import recbole` imports quick_start. `tune` is only used by
      `objective_function`'s ray-tune path (hyper-parameter search), never here. A stub
      is installed even if ray happens to be importable, so ray is never imported.
    * torch.utils.tensorboard: `recbole/utils/utils.py` does `from torch.utils.tensorboard
      import SummaryWriter` at module level (which needs the tensorboard package). The
      Trainer constructs a SummaryWriter, but only `Trainer.fit` writes to it, and this
      runner drives the epochs itself; the stub's writer accepts and ignores every call.
    """
    ray = types.ModuleType("ray")
    ray.__doc__ = "stub installed by bench/recbole/run_recbole.py (ray is not used)"
    tune = types.ModuleType("ray.tune")
    tune.__doc__ = ray.__doc__

    def _no_ray(*_args, **_kwargs):
        raise RuntimeError("ray is stubbed out by run_recbole.py; ray-tune is not supported")

    tune.report = _no_ray
    ray.tune = tune
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune

    class SummaryWriter:  # no-op stand-in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, *_args, **_kwargs):
            pass

        def __getattr__(self, _name):
            return lambda *_args, **_kwargs: None

    tb = types.ModuleType("torch.utils.tensorboard")
    tb.__doc__ = "stub installed by bench/recbole/run_recbole.py (tensorboard is not used)"
    tb.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = tb


def _import_recbole():
    _install_stubs()
    import recbole  # imports recbole.quick_start, hence the ray stub
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model import sequential_recommender
    from recbole.utils import get_trainer, init_logger, init_seed

    return types.SimpleNamespace(
        version=recbole.__version__,
        Config=Config,
        create_dataset=create_dataset,
        data_preparation=data_preparation,
        # The model CLASS is handed to Config and built directly: RecBole's
        # get_model(name) probes recbole.model.general_recommender first, whose
        # __init__ imports every general model, LDiffRec's `kmeans_pytorch` included.
        models={m: getattr(sequential_recommender, m) for m in MODELS},
        get_trainer=get_trainer,
        init_logger=init_logger,
        init_seed=init_seed,
    )


def log(msg: str) -> None:
    print(f"[run_recbole] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- data


def read_u_data(data: Path) -> list[tuple[str, str, str, int, int]]:
    """Rows (user, item, rating, timestamp, line_no) of u.data / u.data.gz."""
    if data.is_dir():
        cands = [data / "u.data", data / "u.data.gz"]
        path = next((p for p in cands if p.is_file()), None)
        if path is None:
            sys.exit(f"error: neither u.data nor u.data.gz in {data}")
    else:
        path = data
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="latin-1") as f:
        for line_no, line in enumerate(f):
            line = line.rstrip("\n")
            if not line:
                continue
            user, item, rating, ts = line.split("\t")
            rows.append((user, item, rating, int(ts), line_no))
    log(f"read {len(rows)} ratings from {path}")
    return rows


def user_sequences(rows) -> dict[str, list[tuple[str, str, int, int]]]:
    """Per user: [(item, rating, timestamp, line_no)] in (timestamp, line_no) order."""
    seqs: dict[str, list] = {}
    for user, item, rating, ts, line_no in rows:
        seqs.setdefault(user, []).append((item, rating, ts, line_no))
    for seq in seqs.values():
        seq.sort(key=lambda r: (r[2], r[3]))
    return seqs


def write_atomic(seqs, workdir: Path) -> Path:
    """<workdir>/ml-100k-bench/ml-100k-bench.inter; timestamp = per-user rank."""
    ddir = workdir / DATASET_NAME
    ddir.mkdir(parents=True, exist_ok=True)
    path = ddir / f"{DATASET_NAME}.inter"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float\n"]
    # written in u.data line order (RecBole sorts by user, then timestamp = rank)
    flat = []
    for user, seq in seqs.items():
        for rank, (item, rating, _ts, line_no) in enumerate(seq):
            flat.append((line_no, f"{user}\t{item}\t{rating}\t{rank}\n"))
    flat.sort()
    lines.extend(s for _, s in flat)
    tmp = path.with_suffix(".inter.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    log(f"wrote {len(flat)} interactions to {path}")
    return path


def check_split(seqs, dataset, train_data, valid_data, test_data, max_length: int) -> dict:
    """Fail loudly unless RecBole's split is leave-last-out in our order for every user."""
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    list_field = iid_field + dataset.config["LIST_SUFFIX"]
    len_field = dataset.config["ITEM_LIST_LENGTH_FIELD"]
    n_users = len(seqs)
    problems = []

    def targets(ds, name, offset):
        feat = ds.inter_feat
        users = ds.id2token(uid_field, feat[uid_field].numpy())
        items = ds.id2token(iid_field, feat[iid_field].numpy())
        if len(users) != n_users:
            problems.append(f"{name}: {len(users)} rows, expected one per user ({n_users})")
        if len(set(users)) != len(users):
            problems.append(f"{name}: a user has more than one row")
        bad = [u for u, i in zip(users, items) if seqs[u][-offset][0] != i]
        if bad:
            problems.append(
                f"{name}: target is not the user's {'last' if offset == 1 else 'second-to-last'} "
                f"item for {len(bad)} users (e.g. user {bad[0]})"
            )
        return feat, users

    feat, users = targets(test_data._dataset, "test", 1)
    targets(valid_data._dataset, "valid", 2)

    # the test rows' input sequence = the (up to max_length) items before the last one
    hist = feat[list_field].numpy()
    lens = feat[len_field].numpy()
    bad_hist = []
    for row, user in enumerate(users):
        want = [r[0] for r in seqs[user][:-1]][-max_length:]
        got = list(dataset.id2token(iid_field, hist[row][: lens[row]]))
        if got != want:
            bad_hist.append(user)
    if bad_hist:
        problems.append(f"test: history window differs for {len(bad_hist)} users (e.g. {bad_hist[0]})")

    n_inter = sum(len(s) for s in seqs.values())
    n_train_rows = len(train_data._dataset)
    want_train_rows = n_inter - 3 * n_users  # targets 2..n-2 of each user
    if n_train_rows != want_train_rows:
        problems.append(f"train: {n_train_rows} rows, expected {want_train_rows}")

    if problems:
        for p in problems:
            log("SPLIT MISMATCH: " + p)
        sys.exit("error: RecBole's split does not match leave-last-out in (timestamp, line) order")
    log(
        f"split checked for all {n_users} users: test = last item, valid = second-to-last, "
        f"test history = previous {max_length} items; {n_train_rows} training rows"
    )
    return {
        "users": n_users,
        "items": dataset.item_num - 1,  # RecBole's item_num counts the padding id 0
        "interactions": n_inter,
        "train_rows": n_train_rows,
        "valid_rows": len(valid_data._dataset),
        "test_rows": len(test_data._dataset),
    }


# ---------------------------------------------------------------------------- main


def model_hparams(model: str, config) -> dict:
    """The model's own hyper-parameters (the keys of RecBole's properties/model/<M>.yaml),
    with the values in force."""
    import recbole
    import yaml

    yml = Path(recbole.__file__).parent / "properties" / "model" / f"{model}.yaml"
    keys = list(yaml.safe_load(yml.read_text()).keys())
    return {k: _jsonable(config[k]) for k in keys}


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-import", action="store_true",
                    help="import RecBole (with the stubs) and the modules used, print versions, exit")
    ap.add_argument("--data", type=Path, help="folder holding u.data or u.data.gz (or the file)")
    ap.add_argument("--model", choices=MODELS)
    ap.add_argument("--budget-seconds", type=float, default=900.0)
    ap.add_argument("--max-length", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--eval-batch-size", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2020)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workdir", type=Path, help="atomic files, checkpoints, logs (default: a temp dir)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    # Trainer._train_epoch builds a (disabled, CPU) torch.cuda.amp.GradScaler every epoch;
    # torch 2.13 warns that this spelling is deprecated. Harmless here.
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler", category=FutureWarning)
    rb = _import_recbole()

    if args.check_import:
        import numpy
        import pandas
        import scipy
        import sklearn

        assert "ray" not in sys.modules or sys.modules["ray"].__doc__.startswith("stub"), "real ray imported"
        from recbole.trainer import Trainer  # noqa: F401

        print(
            f"recbole {rb.version} imports OK (ray and torch.utils.tensorboard stubbed): "
            f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"pandas {pandas.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}"
        )
        return 0

    for need in ("data", "model", "out"):
        if getattr(args, need) is None:
            ap.error(f"--{need.replace('_', '-')} is required")

    if args.workdir is None:
        import tempfile

        workdir = Path(tempfile.mkdtemp(prefix="recbole-bench-"))
    else:
        workdir = args.workdir
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    out_path = args.out.resolve()
    data_path = args.data.resolve()

    seqs = user_sequences(read_u_data(data_path))
    write_atomic(seqs, workdir)

    config_dict = {
        # data
        "data_path": str(workdir),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "RATING_FIELD": "rating",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "val_interval": None,  # every rating is an interaction
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "rm_dup_inter": None,
        "normalize_all": False,  # keep the rank timestamps as they are
        "MAX_ITEM_LIST_LENGTH": args.max_length,
        # protocol
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "repeatable": True,
        "metrics": ["Hit", "NDCG", "MRR", "Precision"],
        "topk": [5, 10, 20],
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 6,
        # training
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "learner": "adam",
        "learning_rate": 0.001,
        "weight_decay": 0.0,
        "train_batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "epochs": args.epochs,
        "eval_step": 1,
        "shuffle": True,
        # environment
        "device": "cpu",
        "use_gpu": False,
        "gpu_id": "",
        "show_progress": False,
        "seed": args.seed,
        "reproducibility": True,
        "checkpoint_dir": str(workdir / "saved"),
        "worker": 0,
        "state": "INFO",
    }

    os.chdir(workdir)  # RecBole writes ./log/ relative to the working directory
    model_class = rb.models[args.model]
    argv, sys.argv = sys.argv, sys.argv[:1]  # Config also parses `--key=value` from sys.argv
    try:
        config = rb.Config(model=model_class, dataset=DATASET_NAME, config_dict=config_dict)
    finally:
        sys.argv = argv
    if Path(config["data_path"]).resolve() != (workdir / DATASET_NAME).resolve():
        sys.exit(f"error: RecBole reads data from {config['data_path']}, not {workdir / DATASET_NAME}")
    rb.init_seed(config["seed"], config["reproducibility"])
    rb.init_logger(config)
    for h in logging.getLogger().handlers:  # RecBole's INFO dumps go to its log file only
        if not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    dataset = rb.create_dataset(config)
    train_data, valid_data, test_data = rb.data_preparation(config, dataset)
    data_stats = check_split(seqs, dataset, train_data, valid_data, test_data, args.max_length)
    data_stats["prepare_seconds"] = round(time.perf_counter() - t0, 3)

    rb.init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = model_class(config, train_data._dataset).to(config["device"])
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = rb.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.eval_collector.data_collect(train_data)  # as Trainer.fit does first

    budget = float(args.budget_seconds)
    train_secs: list[float] = []
    valid_secs: list[float] = []
    cpu_secs: list[float] = []  # process CPU time of each training epoch (contention check)
    losses: list[float] = []
    valid_hist: list[dict] = []
    best = {"score": -float("inf"), "epoch": None, "state": None, "valid": None}
    used = 0.0
    stop_reason = f"reached --epochs {args.epochs}"
    for epoch in range(args.epochs):
        if train_secs:
            last = train_secs[-1] + valid_secs[-1]
            if used + last > budget:
                stop_reason = (
                    f"budget: {used:.1f}s used + {last:.1f}s (last epoch) > {budget:.0f}s"
                )
                break
        t, c = time.perf_counter(), time.process_time()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        t_train = time.perf_counter() - t
        cpu_secs.append(time.process_time() - c)
        t = time.perf_counter()
        score, result = trainer._valid_epoch(valid_data, show_progress=False)
        t_valid = time.perf_counter() - t
        train_secs.append(t_train)
        valid_secs.append(t_valid)
        used += t_train + t_valid
        loss = float(sum(loss)) if isinstance(loss, tuple) else float(loss)
        losses.append(loss)
        valid_hist.append({k: float(v) for k, v in result.items()})
        improved = score > best["score"]
        if improved:
            best.update(
                score=score,
                epoch=epoch,
                valid=dict(valid_hist[-1]),
                state=copy.deepcopy(model.state_dict()),
            )
        log(
            f"{args.model} epoch {epoch}: train {t_train:.2f}s (cpu {cpu_secs[-1]:.1f}s, "
            f"loss {loss:.4f}), valid {t_valid:.2f}s, "
            f"valid ndcg@10 {score:.4f}{' *' if improved else ''} [used {used:.1f}/{budget:.0f}s]"
        )
    else:
        stop_reason = f"reached --epochs {args.epochs}"

    if best["state"] is None:
        sys.exit("error: no epoch was trained (budget too small?)")
    model.load_state_dict(best["state"])
    t = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    test_secs = time.perf_counter() - t
    test = {k: float(v) for k, v in test_result.items()}
    log(
        f"{args.model} stop ({stop_reason}); best epoch {best['epoch']}: valid ndcg@10 "
        f"{best['score']:.4f}, test ndcg@10 {test['ndcg@10']:.4f}, hit@10 {test['hit@10']:.4f}"
    )

    hp = {
        "model": model_hparams(args.model, config),
        "MAX_ITEM_LIST_LENGTH": config["MAX_ITEM_LIST_LENGTH"],
        "learner": config["learner"],
        "learning_rate": config["learning_rate"],
        "weight_decay": config["weight_decay"],
        "clip_grad_norm": config["clip_grad_norm"],
        "train_batch_size": config["train_batch_size"],
        "eval_batch_size": config["eval_batch_size"],
        "train_neg_sample_args": config["train_neg_sample_args"],
        "epochs_max": args.epochs,
        "eval_args": config["eval_args"],
        "metrics": config["metrics"],
        "topk": config["topk"],
        "valid_metric": config["valid_metric"],
        "seed": config["seed"],
        "reproducibility": config["reproducibility"],
        "shuffle": config["shuffle"],
        "training_samples": "RecBole sequential data augmentation: every prefix of a user's "
        "training items predicts the next one (targets 2..n-2), input window "
        f"= the last {args.max_length} items",
        "early_stopping": "none (budget/--epochs only; best-validation state kept)",
    }
    out = {
        "tool": f"RecBole {rb.version}",
        "model": args.model,
        "epochs": len(train_secs),
        "train_seconds_per_epoch": [round(s, 4) for s in train_secs],
        "valid_seconds_per_epoch": [round(s, 4) for s in valid_secs],
        # CPU seconds / wall seconds well under torch_threads => other load on the machine
        "train_cpu_seconds_per_epoch": [round(s, 4) for s in cpu_secs],
        "train_loss_per_epoch": [round(x, 6) for x in losses],
        "valid_ndcg@10_per_epoch": [v.get("ndcg@10") for v in valid_hist],
        "budget_seconds": budget,
        "used_seconds": round(used, 4),
        "stop_reason": stop_reason,
        "best_epoch": best["epoch"],
        "valid": best["valid"],
        "test": test,
        "test_seconds": round(test_secs, 4),
        "parameters": n_params,
        "config": _jsonable(hp),
        "data": data_stats,
        "protocol": PROTOCOL,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "recbole_version": rb.version,
        "torch_version": torch.__version__,
        "workdir": str(workdir),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, out_path)
    log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
