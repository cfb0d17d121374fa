-- tradebotd: one owner per strategy across daemon instances, and the RPCs the daemon calls.
--
-- A lease row says which instance (worker_id) evaluates a strategy until expires_at. Instances
-- claim free or expired leases (FOR UPDATE SKIP LOCKED: two claiming at once never wait for
-- each other and never get the same strategy), renew theirs well before they expire, and
-- release them on shutdown together with their final cursors.
--
-- The cursor travels with the lease: a claim returns the strategy's cursor and, when the lease
-- was taken over from another instance, how that one left: `released` (a clean shutdown: its
-- cursor is exact) or not (it crashed or lost the network: it may have evaluated candles up to
-- previous_expires_at that have not reached this database yet, so the new owner must not
-- evaluate candles that closed before then). An instance stops evaluating a strategy before
-- its lease expires by its own clock (it measures from before it asked), so "closed before the
-- old lease expired" covers everything the old owner can have traded.
--
-- These functions are for the daemon's service-role key only.

CREATE TABLE public.strategy_leases (
    strategy_id         uuid PRIMARY KEY REFERENCES public.strategies (id) ON DELETE CASCADE,
    worker_id           text NOT NULL,
    expires_at          timestamptz NOT NULL,
    acquired_at         timestamptz NOT NULL DEFAULT now(),
    released            boolean NOT NULL DEFAULT false,
    -- Incremented whenever the owner changes: a fencing token for writes that must come from
    -- the current owner only.
    fence               bigint NOT NULL DEFAULT 1,
    previous_worker_id  text,
    previous_expires_at timestamptz,
    previous_released   boolean
);
CREATE INDEX strategy_leases_worker ON public.strategy_leases (worker_id);

GRANT SELECT ON public.strategy_leases TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.strategy_leases TO service_role;
ALTER TABLE public.strategy_leases ENABLE ROW LEVEL SECURITY;
-- The web app may show which instance runs a strategy; only the daemon changes leases.
CREATE POLICY strategy_leases_owner_reads ON public.strategy_leases FOR SELECT TO authenticated
    USING (EXISTS (SELECT 1 FROM public.strategies s
                   WHERE s.id = strategy_id AND s.user_id = (SELECT auth.jwt() ->> 'sub')));

-- Claim running strategies that nobody holds (or whose lease expired), optionally only those
-- trading one of p_symbols (upper-case, e.g. BTCUSDT). Leases this worker holds and that have
-- not expired are left alone (renew them with tradebotd_renew_leases).
CREATE FUNCTION public.tradebotd_claim_strategies(
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
          AND (l.strategy_id IS NULL OR l.expires_at <= now())
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
            acquired_at = excluded.acquired_at,
            released = false,
            fence = l.fence + 1,
            previous_worker_id = l.worker_id,
            previous_expires_at = l.expires_at,
            previous_released = l.released
        -- Re-checked on the row as it is now (another instance may have claimed it since).
        WHERE l.expires_at <= now()
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

-- Extend this worker's leases; returns the ones it still holds (a missing id is lost).
CREATE FUNCTION public.tradebotd_renew_leases(
    p_worker_id text,
    p_lease_s integer,
    p_strategy_ids uuid[]
) RETURNS TABLE (strategy_id uuid, expires_at timestamptz, now timestamptz)
    LANGUAGE sql
    AS $$
    UPDATE public.strategy_leases l
    SET expires_at = now() + make_interval(secs => p_lease_s)
    WHERE l.worker_id = p_worker_id AND NOT l.released AND l.strategy_id = ANY (p_strategy_ids)
    RETURNING l.strategy_id, l.expires_at, now();
$$;

-- Give leases up (all of this worker's when p_strategy_ids is NULL), recording the final
-- cursors first ([{"strategy_id","symbol","interval","last_candle_time"}], never moved back) so
-- the next owner starts exactly where this one stopped. Returns how many leases were released.
CREATE FUNCTION public.tradebotd_release_leases(
    p_worker_id text,
    p_strategy_ids uuid[] DEFAULT NULL,
    p_cursors jsonb DEFAULT '[]'
) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    released_count integer;
BEGIN
    INSERT INTO public.strategy_cursors AS cur (strategy_id, symbol, interval, last_candle_time, updated_at)
    SELECT (c ->> 'strategy_id')::uuid, c ->> 'symbol', c ->> 'interval', (c ->> 'last_candle_time')::bigint, now()
    FROM jsonb_array_elements(coalesce(p_cursors, '[]')) c
    JOIN public.strategy_leases l ON l.strategy_id = (c ->> 'strategy_id')::uuid
    WHERE l.worker_id = p_worker_id AND NOT l.released
    ON CONFLICT (strategy_id) DO UPDATE SET
        symbol = excluded.symbol,
        interval = excluded.interval,
        last_candle_time = greatest(cur.last_candle_time, excluded.last_candle_time),
        updated_at = excluded.updated_at;
    UPDATE public.strategy_leases l
    SET expires_at = now(), released = true
    WHERE l.worker_id = p_worker_id AND NOT l.released
      AND (p_strategy_ids IS NULL OR l.strategy_id = ANY (p_strategy_ids));
    GET DIAGNOSTICS released_count = ROW_COUNT;
    RETURN released_count;
END
$$;

-- The daemon's own changes to strategy rows (status 'error', error_message, last_run_at,
-- last_signal_at), many rows per call. Only the keys present in each object are set, so an
-- edit the user makes in the web app at the same time (code, parameters) is never overwritten.
CREATE FUNCTION public.tradebotd_patch_strategies(p_rows jsonb) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    patched integer;
BEGIN
    UPDATE public.strategies s SET
        status = CASE WHEN r ? 'status' THEN r ->> 'status' ELSE s.status END,
        error_message = CASE WHEN r ? 'error_message' THEN r ->> 'error_message' ELSE s.error_message END,
        last_run_at = CASE WHEN r ? 'last_run_at' THEN (r ->> 'last_run_at')::timestamptz ELSE s.last_run_at END,
        last_signal_at = CASE WHEN r ? 'last_signal_at' THEN (r ->> 'last_signal_at')::timestamptz
                              ELSE s.last_signal_at END
    FROM jsonb_array_elements(p_rows) r
    WHERE s.id = (r ->> 'id')::uuid;
    GET DIAGNOSTICS patched = ROW_COUNT;
    RETURN patched;
END
$$;

REVOKE ALL ON FUNCTION public.tradebotd_claim_strategies(text, integer, text[], integer) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.tradebotd_renew_leases(text, integer, uuid[]) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.tradebotd_release_leases(text, uuid[], jsonb) FROM PUBLIC, anon, authenticated;
REVOKE ALL ON FUNCTION public.tradebotd_patch_strategies(jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.tradebotd_claim_strategies(text, integer, text[], integer) TO service_role;
GRANT EXECUTE ON FUNCTION public.tradebotd_renew_leases(text, integer, uuid[]) TO service_role;
GRANT EXECUTE ON FUNCTION public.tradebotd_release_leases(text, uuid[], jsonb) TO service_role;
GRANT EXECUTE ON FUNCTION public.tradebotd_patch_strategies(jsonb) TO service_role;
