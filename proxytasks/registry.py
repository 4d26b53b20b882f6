"""A tiny name -> class registry, so recipes and the CLI can name components."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from .errors import ProxytasksError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes (or factories) of one kind, e.g. rules or losses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator adding ``cls`` under ``name``."""

        def add(cls: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = cls
            return cls

        return add

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name lists the known ones."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ProxytasksError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)
