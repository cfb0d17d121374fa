"""The host's copy of a strategy's history: the newest ``capacity`` candles, in order, whatever
mix of single appends (buffered) and batches fed it."""

from __future__ import annotations

import numpy as np
import pytest

from tradebotd.sandbox.history import History


@pytest.mark.parametrize("capacity", [1, 5, 15, 16, 17, 127, 128, 300])
def test_history_keeps_the_newest_candles_in_order(capacity: int) -> None:
    rng = np.random.default_rng(capacity)
    history, model, t = History(capacity), [], 0
    for _ in range(200):
        if rng.random() < 0.7:
            row = (float(t), 1.0, 2.0, 0.5, 1.5, 3.0)
            history.append(row)
            model.append(row)
            t += 1
        else:
            n = int(rng.integers(0, 400))
            rows = np.array([(float(t + i), 1.0, 2.0, 0.5, 1.5, 3.0) for i in range(n)]).reshape(n, 6)
            history.extend(rows)
            model.extend(tuple(r) for r in rows.tolist())
            t += n
        if rng.random() < 0.2:
            expected = model[-capacity:]
            assert len(history) == len(expected)
            assert history.ordered().tolist() == [list(r) for r in expected]
    assert history.ordered().tolist() == [list(r) for r in model[-capacity:]]
