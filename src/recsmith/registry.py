"""Name → class registries: config names select components, no if-chains."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from recsmith.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders filled with the `register` decorator."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def lookup(self, name: str) -> T | None:
        """The entry called `name`, or None."""
        return self._items.get(name)

    def unknown(self, name: str) -> str:
        return (
            f"unknown {self.what} '{name}' (choose from {', '.join(self.names())})"
            f"{did_you_mean(name, self._items)}"
        )

    def check(self, name: str) -> None:
        """Raise ValueError (for config validators, which add the dotted key) if unknown."""
        if name not in self._items:
            raise ValueError(self.unknown(name))

    def get(self, name: str, key: str = "") -> T:
        """The entry called `name`; a ConfigError naming the dotted `key` otherwise."""
        if name not in self._items:
            raise ConfigError(f"{key + ': ' if key else ''}{self.unknown(name)}")
        return self._items[name]
