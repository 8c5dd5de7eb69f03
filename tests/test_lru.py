"""core.lru.LRU: eviction order, the size cap, make-once under concurrency."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.lru import LRU


def test_evicts_the_least_recently_used():
    cache = LRU(3)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("d", "D")  # evicts b
    assert cache.keys() == ["c", "a", "d"] and cache.get("b") is None and cache.get("b", "-") == "-"
    cache.put("c", "C2")  # replacing refreshes too
    cache.put("e", "E")
    assert cache.keys() == ["d", "c", "e"] and cache.get("c") == "C2" and len(cache) == 3


def test_size_cap_keeps_at_least_the_newest():
    cache = LRU(10, max_size=10, size=len)
    cache.put("a", "xxxx")
    cache.put("b", "xxxx")
    cache.put("c", "xxxx")  # 12 > 10: a goes
    assert cache.keys() == ["b", "c"]
    cache.put("b", "x")  # replaced: the total shrinks to 5
    cache.put("d", "xxxx")
    assert cache.keys() == ["c", "b", "d"]
    cache.put("huge", "x" * 50)  # bigger than the cap on its own: everything else goes, it stays
    assert cache.keys() == ["huge"]
    cache.put("small", "x")
    assert cache.keys() == ["small"]
    cache.discard(lambda k: k == "small")
    cache.put("e", "x" * 10)  # the total was brought back to zero, so exactly the cap fits
    assert cache.keys() == ["e"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_entries"):
        LRU(0)
    with pytest.raises(ValueError, match="together"):
        LRU(2, max_size=5)


def test_discard_by_key():
    cache = LRU(5)
    for key in [("a", 1), ("a", 2), ("b", 1)]:
        cache.put(key, str(key))
    cache.discard(lambda k: k[0] == "a")
    assert cache.keys() == [("b", 1)]


def test_get_or_make_makes_each_key_once_while_others_proceed():
    cache = LRU(8)
    calls: list[str] = []
    slow_started, release = threading.Event(), threading.Event()

    def make(key: str):
        def build() -> str:
            calls.append(key)
            if key == "slow":
                slow_started.set()
                release.wait(10)  # held until the fast key has been made
            return key * 2

        return build

    with ThreadPoolExecutor(8) as pool:
        slow = [pool.submit(cache.get_or_make, "slow", make("slow")) for _ in range(4)]
        assert slow_started.wait(10)
        assert cache.get_or_make("fast", make("fast")) == "fastfast"  # not held up by the slow key
        assert not any(f.done() for f in slow)  # the other callers of "slow" wait for its one make
        release.set()
        assert [f.result() for f in slow] == ["slowslow"] * 4
    assert sorted(calls) == ["fast", "slow"]


def test_a_failed_make_caches_nothing():
    cache = LRU(2)

    def fail() -> str:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_make("k", fail)
    assert cache.keys() == [] and cache.get_or_make("k", lambda: "v") == "v"


def test_concurrent_puts_and_gets_keep_the_caps():
    cache = LRU(16, max_size=100, size=lambda v: v)

    def hammer(seed: int) -> None:
        for i in range(2000):
            key = (seed * 7 + i) % 40
            cache.put(key, 1 + key % 9)
            cache.get((key + 3) % 40)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(hammer, range(4)))
    keys = cache.keys()
    assert len(keys) <= 16 and len(set(keys)) == len(keys)
    assert sum(cache.get(k) for k in keys) <= 100
