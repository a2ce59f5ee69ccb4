"""Sequential architectures by name (`model.sequential.architecture`): what each trains with
(`objective`), which module it is (`model`, built as `model(num_items, cfg.model.sequential)`;
None for one fitted without the Trainer), which settings it needs, and the section of its
own settings (`model.sequential.din`, `model.sequential.lightgbm`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from recsmith.models.next_item import DINRanker, NextItemModel
from recsmith.models.sequential.config import DINConfig, LightGBMConfig
from recsmith.models.sequential import ENCODERS
from recsmith.registry import Registry


@dataclass(frozen=True)
class Architecture:
    objective: str  # "softmax": cross-entropy over all items; "bce": candidate rows
    model: Optional[type] = None  # None: fitted directly (recsmith.train.fitted), not by the Trainer
    requires: tuple[str, ...] = ()  # model.sequential keys it cannot do without
    section: Optional[str] = None  # its own settings: model.sequential.<section>, validated by `config`
    config: Optional[type] = None

    @property
    def fitted(self) -> bool:
        return self.model is None


ARCHITECTURES: Registry[Architecture] = Registry("sequential architecture")
for _name in ENCODERS.names():  # every next-item encoder: SASRec, GRU4Rec, NARM, AvgPool
    ARCHITECTURES.register(_name)(Architecture("softmax", NextItemModel))
ARCHITECTURES.register("din")(Architecture("bce", DINRanker, section="din", config=DINConfig))
ARCHITECTURES.register("most_popular")(Architecture("softmax"))  # a count, ranked like softmax scores
ARCHITECTURES.register("lightgbm")(Architecture("bce", section="lightgbm", config=LightGBMConfig))
ARCHITECTURES.register("hybrid")(Architecture("bce", requires=("hybrid_din_run",), section="lightgbm",
                                              config=LightGBMConfig))


def section_configs() -> dict[str, type]:
    """model.sequential.<section> -> the config model of the architectures that own it."""
    return {a.section: a.config for a in map(ARCHITECTURES.lookup, ARCHITECTURES.names()) if a.section}
