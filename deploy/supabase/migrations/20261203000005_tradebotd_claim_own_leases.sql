-- tradebotd: an instance restarted with the same worker id takes its own unexpired leases back at
-- once (they are its own: its local store holds their state), instead of waiting for them to
-- expire. Leases of other workers are still taken only once expired.

CREATE OR REPLACE FUNCTION public.tradebotd_claim_strategies(
    p_worker_id text,
    p_lease_s integer,
    p_symbols text[] DEFAULT NULL,
    p_limit integer DEFAULT 1000
) RETURNS TABLE (
    strategy_id uuid,
    expires_at timestamptz,
    fence bigint,
    taken_over boolean,
    previous_worker_id text,
    previous_expires_at timestamptz,
    previous_released boolean,
    last_candle_time bigint,
    now timestamptz
)
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF p_lease_s IS NULL OR p_lease_s < 1 THEN
        RAISE EXCEPTION 'lease time must be at least 1 s (got %)', p_lease_s USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH candidates AS (
        SELECT s.id
        FROM public.strategies s
        LEFT JOIN public.strategy_leases l ON l.strategy_id = s.id
        WHERE s.status = 'running'
          AND (p_symbols IS NULL OR upper(s.asset) = ANY (p_symbols))
          AND (l.strategy_id IS NULL OR l.expires_at <= now() OR l.worker_id = p_worker_id)
        ORDER BY s.created_at, s.id
        LIMIT p_limit
        FOR UPDATE OF s SKIP LOCKED
    ),
    claimed AS (
        INSERT INTO public.strategy_leases AS l (strategy_id, worker_id, expires_at, acquired_at)
        SELECT c.id, p_worker_id, now() + make_interval(secs => p_lease_s), now() FROM candidates c
        ON CONFLICT ON CONSTRAINT strategy_leases_pkey DO UPDATE SET
            worker_id = excluded.worker_id,
            expires_at = excluded.expires_at,
            acquired_at = CASE WHEN l.worker_id = excluded.worker_id AND NOT l.released
                               THEN l.acquired_at ELSE excluded.acquired_at END,
            released = false,
            fence = CASE WHEN l.worker_id = excluded.worker_id THEN l.fence ELSE l.fence + 1 END,
            previous_worker_id = l.worker_id,
            previous_expires_at = l.expires_at,
            previous_released = l.released
        -- Re-checked on the row as it is now (another instance may have claimed it since).
        WHERE l.expires_at <= now() OR l.worker_id = excluded.worker_id
        RETURNING l.strategy_id, l.expires_at, l.fence, l.previous_worker_id, l.previous_expires_at,
                  l.previous_released
    )
    SELECT c.strategy_id, c.expires_at, c.fence,
           c.previous_worker_id IS NOT NULL AND c.previous_worker_id <> p_worker_id,
           c.previous_worker_id, c.previous_expires_at, c.previous_released,
           cur.last_candle_time, now()
    FROM claimed c
    LEFT JOIN public.strategy_cursors cur ON cur.strategy_id = c.strategy_id;
END
$$;

REVOKE ALL ON FUNCTION public.tradebotd_claim_strategies(text, integer, text[], integer) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.tradebotd_claim_strategies(text, integer, text[], integer) TO service_role;
