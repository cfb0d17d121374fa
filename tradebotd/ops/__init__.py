"""Operations edges of the daemon: the systemd notify protocol and the progress watchdog
(:mod:`.sdnotify`), health as a pure function of a status snapshot (:mod:`.health`), the
Prometheus registry (:mod:`.metrics`), and the small HTTP server that serves both plus the web
app's manual trigger (:mod:`.http`).

Everything here reads the pipeline through the small typed status Protocols in :mod:`.status`,
never through private attributes, so the engine, feed, writer and brokers stay free of
Prometheus, aiohttp and systemd.
"""
