-- tradebotd: tradebotd_patch_strategies also takes the fields a local edit changes
-- (`tradebotd strategy add|start|stop` and file edits on an instance: name, code, asset,
-- interval, parameters, kind, portfolio_id), still setting only the keys each object has.

CREATE OR REPLACE FUNCTION public.tradebotd_patch_strategies(p_rows jsonb) RETURNS integer
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
                              ELSE s.last_signal_at END,
        name = CASE WHEN r ? 'name' THEN r ->> 'name' ELSE s.name END,
        python_code = CASE WHEN r ? 'python_code' THEN r ->> 'python_code' ELSE s.python_code END,
        typescript_code = CASE WHEN r ? 'typescript_code' THEN r ->> 'typescript_code' ELSE s.typescript_code END,
        asset = CASE WHEN r ? 'asset' THEN r ->> 'asset' ELSE s.asset END,
        interval = CASE WHEN r ? 'interval' THEN r ->> 'interval' ELSE s.interval END,
        parameters = CASE WHEN r ? 'parameters' THEN r -> 'parameters' ELSE s.parameters END,
        kind = CASE WHEN r ? 'kind' THEN r ->> 'kind' ELSE s.kind END,
        portfolio_id = CASE WHEN r ? 'portfolio_id' THEN (r ->> 'portfolio_id')::uuid ELSE s.portfolio_id END
    FROM jsonb_array_elements(p_rows) r
    WHERE s.id = (r ->> 'id')::uuid;
    GET DIAGNOSTICS patched = ROW_COUNT;
    RETURN patched;
END
$$;

REVOKE ALL ON FUNCTION public.tradebotd_patch_strategies(jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.tradebotd_patch_strategies(jsonb) TO service_role;
