"""Evaluation processes: strategies evaluated in parallel without sharing the GIL.

Two threads of one Python process evaluate 100 sandboxed JS strategies in about 3 ms where one
takes 4 ms: each evaluation spends ~25 µs in wasm (no GIL) and a few µs of Python around it, and
that Python, with its refcount traffic on objects both threads share, contends across cores. Two
processes take 2 ms. So with ``sandbox.eval_processes`` >= 1 the daemon places strategies on
itself and on that many child processes, the least loaded first, and on every candle sends each
child one request for its share while it evaluates its own (:mod:`tradebotd.workers.pool`).

Everything else stays in the daemon: the engine, the broker, the store, the order of
settlement (slot order, as before). A child only holds sandboxes (:mod:`tradebotd.workers.child`)
and talks JSON (:mod:`tradebotd.workers.protocol`), gets no secrets in its environment, and
ends when the daemon closes its socket.

Errors:

    StrategyError (tradebotd.errors)
    └── SandboxUnavailable (tradebotd.sandbox.errors)
        └── ProcessDied      an evaluation process exited or hung and could not be replaced in
                             time; the next request starts a new one

A strategy's own errors cross the process boundary as the same classes with the same
attributes; a bug in a child arrives as ``protocol.RemoteFailure``.
"""
