"""Thread-unsafe (single event loop) object cache with secondary indexes."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, Protocol, TypeVar

from kube_router.k8s.models import ObjectMeta, object_key


class HasMeta(Protocol):
    @property
    def metadata(self) -> ObjectMeta: ...


T = TypeVar("T", bound=HasMeta)

IndexFunc = Callable[[T], Iterable[str]]


class Store(Generic[T]):
    """Objects keyed by ``namespace/name`` plus named indexes (index value -> keys).

    Only the informer writes; controllers read. Index functions must be pure functions of the
    object, so that removing an object can recompute the values it was filed under.
    """

    def __init__(self, indexers: Mapping[str, IndexFunc[T]] | None = None) -> None:
        self._items: dict[str, T] = {}
        self._indexers: dict[str, IndexFunc[T]] = dict(indexers or {})
        self._indexes: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def key_list(self) -> builtins.list[str]:
        return list(self._items)

    def list(self) -> builtins.list[T]:
        return list(self._items.values())

    def by_index(self, index: str, value: str) -> builtins.list[T]:
        """Objects whose index function returned ``value``."""
        keys = self._indexes[index].get(value, ())
        return [self._items[k] for k in keys]

    def index_values(self, index: str) -> builtins.list[str]:
        return list(self._indexes[index])

    def upsert(self, obj: T) -> T | None:
        """Insert or replace; return the previous object, if any."""
        key = object_key(obj.metadata)
        old = self._items.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = obj
        self._index(key, obj)
        return old

    def remove(self, key: str) -> T | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _index(self, key: str, obj: T) -> None:
        for name, func in self._indexers.items():
            idx = self._indexes[name]
            for value in func(obj):
                idx.setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: T) -> None:
        for name, func in self._indexers.items():
            idx = self._indexes[name]
            for value in func(obj):
                keys = idx.get(value)
                if keys is None:
                    continue
                keys.discard(key)
                if not keys:
                    del idx[value]
