-- tradebotd: what a bare PostgreSQL lacks that Supabase provides, so these migrations run both
-- with `supabase db push` (where every statement below is a no-op) and with
-- `tradebotd db migrate --dsn postgresql://...` on a self-hosted PostgreSQL.
--
-- * the API roles PostgREST switches to: anon, authenticated, service_role (BYPASSRLS);
-- * the auth schema and auth.jwt(), which reads the request's JWT claims the way Supabase's own
--   definition does (PostgREST sets `request.jwt.claims` per request).
--
-- Every object is created only when missing: on Supabase the roles, the schema and auth.jwt()
-- exist and belong to Supabase, and must not be replaced.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS auth;

DO $$
BEGIN
    IF to_regprocedure('auth.jwt()') IS NULL THEN
        -- Supabase's definition: the claims of the request's JWT as jsonb (NULL outside a request).
        CREATE FUNCTION auth.jwt() RETURNS jsonb
            LANGUAGE sql STABLE
            AS $f$
                SELECT coalesce(
                    nullif(current_setting('request.jwt.claim', true), ''),
                    nullif(current_setting('request.jwt.claims', true), '')
                )::jsonb
            $f$;
        -- Inside the guard: on Supabase the auth schema is not ours to grant on.
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
        GRANT EXECUTE ON FUNCTION auth.jwt() TO anon, authenticated, service_role;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
