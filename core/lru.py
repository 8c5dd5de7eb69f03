"""A small thread-safe least-recently-used cache, for loaded models and recent results in the UI.

At most max_entries values, and optionally at most max_size in total as measured by size(value); the
least recently used entries are dropped first. The newest entry always stays, even when it alone is
bigger than max_size, so the value just computed can still be served. Values must not be None (None
means "not cached").
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(
        self, max_entries: int, max_size: float | None = None, size: Callable[[V], float] | None = None
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if (max_size is None) != (size is None):
            raise ValueError("max_size and size go together: give both or neither")
        self.max_entries = max_entries
        self.max_size = max_size
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._total = 0.0
        self._lock = threading.Lock()
        self._making: dict[K, threading.Lock] = {}  # one lock per key being made by get_or_make

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value for key (now the most recently used), or default."""
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Store value as the most recently used entry, dropping the least recently used beyond the caps."""
        with self._lock:
            self._pop(key)
            self._items[key] = value
            self._total += self._size(value) if self._size else 0
            while len(self._items) > 1 and (
                len(self._items) > self.max_entries or (self.max_size is not None and self._total > self.max_size)
            ):
                self._pop(next(iter(self._items)))

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The value for key; on a miss make() computes it, once: other callers asking for the same key
        meanwhile wait for it, while other keys stay available."""
        value = self.get(key)
        if value is not None:
            return value
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        with making:
            try:
                value = self.get(key)
                if value is None:
                    value = make()
                    self.put(key, value)
                return value
            finally:
                with self._lock:
                    if self._making.get(key) is making:
                        del self._making[key]

    def discard(self, where: Callable[[K], bool]) -> None:
        """Drop every entry whose key satisfies where(key)."""
        with self._lock:
            for key in [k for k in self._items if where(k)]:
                self._pop(key)

    def keys(self) -> list[K]:
        """Keys from the least to the most recently used."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _pop(self, key: K) -> None:
        if key in self._items:
            value = self._items.pop(key)
            self._total -= self._size(value) if self._size else 0
