"""The host's copy of a strategy's history: the newest ``capacity`` candles, in order, whatever
mix of single appends and batches fed it; complete chunks shared between identical histories."""

from __future__ import annotations

import numpy as np
import pytest

from tradebotd.sandbox.history import CHUNK, History

MIN = 60_000


@pytest.mark.parametrize("interval_ms", [None, MIN])
@pytest.mark.parametrize("capacity", [1, 5, 31, 32, 33, 127, 128, 300])
def test_history_keeps_the_newest_candles_in_order(capacity: int, interval_ms: int | None) -> None:
    rng = np.random.default_rng(capacity)
    history, model, t = History(capacity, interval_ms), [], 0
    for _ in range(200):
        if rng.random() < 0.05:
            t += int(rng.integers(1, 100))  # a gap in the stream
        if rng.random() < 0.7:
            row = (float(t * MIN), 1.0, 2.0, 0.5, float(rng.random()), 3.0)
            history.append(row)
            model.append(row)
            t += 1
        else:
            n = int(rng.integers(0, 400))
            rows = np.array([(float((t + i) * MIN), 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(n)]).reshape(n, 6)
            history.extend(rows)
            model.extend(tuple(r) for r in rows.tolist())
            t += n
        if rng.random() < 0.2:
            expected = model[-capacity:]
            assert len(history) == len(expected)
            assert history.ordered().tolist() == [list(r) for r in expected]
    assert history.ordered().tolist() == [list(r) for r in model[-capacity:]]


def _rows(start: int, n: int, close: float = 1.5) -> np.ndarray:
    return np.array([(float((start + i) * MIN), 1.0, 2.0, 0.5, close + start + i, 3.0) for i in range(n)])


def test_histories_of_one_stream_share_their_complete_chunks_whenever_they_started() -> None:
    early, late = History(500, MIN), History(500, MIN)
    early.extend(_rows(0, 200))
    late.extend(_rows(150, 50))  # joined later: the same candles from 150 on
    for i in range(200, 300):
        candle = tuple(_rows(i, 1)[0].tolist())
        early.append(candle)
        late.append(candle)
    assert late.ordered().tolist() == early.ordered()[150:].tolist()
    shared = {id(c) for c in early._chunks} & {id(c) for c in late._chunks}
    # Chunks end at multiples of CHUNK minutes: every complete one from minute 160 on is shared.
    assert len(shared) == len(late._chunks) - 1 == (288 - 160) // CHUNK
    assert all(not chunk.flags.writeable for chunk in early._chunks)


def test_only_identical_bytes_are_shared() -> None:
    a, b, c = History(100, MIN), History(100, MIN), History(100, MIN)
    a.extend(_rows(0, 70))
    b.extend(_rows(0, 70, close=2.5))
    negative_zero = _rows(0, 70, close=0.0)
    negative_zero[0, 4] = -0.0  # equal as a float, not the same candle for a strategy
    c.extend(_rows(0, 70, close=0.0))
    d = History(100, MIN)
    d.extend(negative_zero)
    assert not {id(x) for x in a._chunks} & {id(x) for x in b._chunks}
    assert c._chunks[0] is not d._chunks[0]  # the chunk holding the -0.0
    assert c._chunks[1] is d._chunks[1]
    assert np.signbit(d.ordered()[0, 4]) and not np.signbit(c.ordered()[0, 4])
