"""Supabase: the schema's migrations, the outbox replicator, the strategies mirror and leases.

The embedded SQLite store stays the daemon's truth; this package keeps a Supabase project (or a
self-hosted PostgreSQL behind PostgREST) in step with it, without ever putting the network on the
trading path.
"""
