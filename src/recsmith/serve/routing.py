"""Which model answers a request: the live slot (atomic hot swap) and gray release.

A `ModelSlot` holds one immutable `Deployment` (the primary model, optionally a canary with
its traffic share). A request reads the slot once and keeps that deployment to the end, so
swapping in a new one (one reference assignment) never drops or mixes a request: requests
already running finish on the old model, the next ones get the new.

A canary takes at most MAX_CANARY_SHARE of the traffic. Beyond half it would be the model
most requests see, which is what a swap (recorded, and pinned) or a registry promotion
(gated, and in the registry's history) are for; a gray release stays the minority.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass
from typing import Optional

from recsmith.serve.scorer import Scorer

MAX_CANARY_SHARE = 0.5


@dataclass(frozen=True)
class LoadedModel:
    label: str  # e.g. "ctr_model@v3", or a path
    scorer: Scorer


@dataclass(frozen=True)
class Deployment:
    primary: LoadedModel
    canary: Optional[LoadedModel] = None
    canary_share: float = 0.0
    pinned: bool = False  # the primary was swapped in by hand: a registry watch leaves it until a promotion

    def choose(self, request_key: str | None) -> LoadedModel:
        """The canary for `canary_share` of requests: sticky per request key when given
        (a user or request id), else by a random draw."""
        if self.canary is None or self.canary_share <= 0.0:
            return self.primary
        if request_key is None:
            draw = random.random()
        else:
            digest = hashlib.blake2b(request_key.encode(), digest_size=8).digest()
            draw = int.from_bytes(digest, "big") / 2 ** 64
        return self.canary if draw < self.canary_share else self.primary


class ModelSlot:
    """The current deployment; `swap` replaces it atomically."""

    def __init__(self, deployment: Deployment):
        self._deployment = deployment
        self._lock = threading.Lock()  # serialises writers only; readers never wait

    @property
    def current(self) -> Deployment:
        return self._deployment

    def swap(self, primary: LoadedModel | None = None, canary: LoadedModel | None = None,
             canary_share: float | None = None, drop_canary: bool = False,
             pinned: bool | None = None) -> Deployment:
        """A new deployment from the current one with the given parts replaced."""
        with self._lock:
            old = self._deployment
            new_canary = None if drop_canary else (canary or old.canary)
            share = 0.0 if new_canary is None else (old.canary_share if canary_share is None else canary_share)
            self._deployment = Deployment(primary or old.primary, new_canary, share,
                                          old.pinned if pinned is None else pinned)
            return self._deployment
