"""Orders without I/O: the values of the broker seam (:mod:`.model`), the order state machine
(:mod:`.state`), the ledger of positions and cash (:mod:`.ledger`), decision -> order validation
(:mod:`.validate`) and the desk that ties them together for the daemon's engine and the backtest
(:mod:`.desk`). See DESIGN.md §1 and :mod:`tradebotd.broker.base` for the broker protocol."""
