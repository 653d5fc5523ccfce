from __future__ import annotations

import threading

import pytest

from bertetl.engine.prefetch import prefetch


def test_prefetch_keeps_order_and_bounds_readahead() -> None:
    produced = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    seen = []
    for item in prefetch(source(), depth=2):
        seen.append(item)
        assert len(produced) - len(seen) <= 3  # depth in the queue + one being put
    assert seen == list(range(50))


def test_prefetch_reraises_producer_errors_in_order() -> None:
    def source():
        yield 1
        raise ValueError("bad file")

    out = []
    with pytest.raises(ValueError, match="bad file"):
        for item in prefetch(source()):
            out.append(item)
    assert out == [1]


def test_closing_the_consumer_stops_the_producer() -> None:
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    def producers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "bertetl-prefetch"}

    before = producers()  # another test's, in this worker, are not this one's
    stream = prefetch(endless(), depth=1)
    assert next(stream) == 0
    assert producers() - before  # the producer runs
    stream.close()
    assert not producers() - before  # and is gone
