"""``make bench``: measurements against the issues' targets, printed as a table and written as JSON.

Benchmarks are not tests: nothing here asserts a time. Each section returns rows; the runner prints
them and writes them to ``--out``. Reading ``../shared`` data is allowed here (``--data``), never in tests.
"""
