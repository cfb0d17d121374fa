"""The example strategy and what is measured against it.

* ``sma_crossover.js`` (and ``sma_crossover.ts``, the same in TypeScript): the SMA crossover the
  README, ``make run`` and the tests use; ``strategies_wasm/`` has it as native wasm.
* :mod:`tradebotd.examples.reference`: the same strategy in plain Python, the reference the
  sandboxes are checked and benchmarked against.
* :mod:`tradebotd.examples.synthetic`: the seeded synthetic candles benchmarks and tests run on.
"""
