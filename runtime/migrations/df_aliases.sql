-- pg_durable's df schema as aliases of the state schema's functions, made by
-- `dbt-durable migrate --df-aliases` (not a numbered migration: only when asked for). With it a
-- pg_durable user's SQL (SELECT df.start(...), df.status(id), df.signal(id, 'go', 'yes'), ...)
-- runs unchanged. __DF__ is the alias schema (default df), __SCHEMA__ the state schema.
--
-- The aliases are SECURITY INVOKER: each calls the state schema's SECURITY DEFINER function,
-- which checks the caller's login, so the aliases add no privilege. Ids are text, as in
-- pg_durable; an id that is not a run id reads as an unknown run.

CREATE SCHEMA IF NOT EXISTS __DF__;
COMMENT ON SCHEMA __DF__ IS 'dbt-durable df aliases of __SCHEMA__';

CREATE OR REPLACE FUNCTION __DF__.run_id(instance_id text) RETURNS uuid
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN btrim(instance_id) ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'
                THEN btrim(instance_id)::uuid END
$$;

CREATE OR REPLACE FUNCTION __DF__.start(fut text, label text DEFAULT NULL) RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$ SELECT __SCHEMA__.start(fut, label) $$;

CREATE OR REPLACE FUNCTION __DF__.status(instance_id text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT __SCHEMA__.instance_status(__DF__.run_id(instance_id))
$$;

CREATE OR REPLACE FUNCTION __DF__.result(instance_id text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT __SCHEMA__.instance_result(__DF__.run_id(instance_id))
$$;

CREATE OR REPLACE FUNCTION __DF__.cancel(instance_id text, reason text DEFAULT 'cancelled') RETURNS text
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT __SCHEMA__.cancel(coalesce(__DF__.run_id(instance_id), '00000000-0000-0000-0000-000000000000'), reason)
$$;

CREATE OR REPLACE FUNCTION __DF__.signal(instance_id text, signal_name text, signal_data text DEFAULT '{}')
RETURNS bigint LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT __SCHEMA__.signal(coalesce(__DF__.run_id(instance_id), '00000000-0000-0000-0000-000000000000'),
                             signal_name, signal_data)
$$;

CREATE OR REPLACE FUNCTION __DF__.list_instances(status_filter text DEFAULT NULL, limit_count integer DEFAULT 100)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM __SCHEMA__.list_instances(status_filter, limit_count)
$$;

CREATE OR REPLACE FUNCTION __DF__.list_instances(
    status_filter text, limit_count integer, label_filter text, after_cursor text DEFAULT NULL
) RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint,
                 output text, created_at timestamptz, completed_at timestamptz, next_cursor text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM __SCHEMA__.list_instances(status_filter, limit_count, label_filter, after_cursor)
$$;

CREATE OR REPLACE FUNCTION __DF__.instance_nodes(instance_id text)
RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text, right_node text,
               status text, result text, status_details text, inferred_status text,
               inferred_status_from_ancestor_id text, updated_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM __SCHEMA__.instance_nodes(coalesce(__DF__.run_id(instance_id), '00000000-0000-0000-0000-000000000000'))
$$;

CREATE OR REPLACE FUNCTION __DF__.explain(input text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT __SCHEMA__.explain(input) $$;

CREATE OR REPLACE FUNCTION __DF__.metrics()
RETURNS TABLE (total_instances bigint, running_instances bigint, completed_instances bigint,
               failed_instances bigint, total_executions bigint, total_events bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$ SELECT * FROM __SCHEMA__.metrics() $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __DF__ FROM PUBLIC;

-- Every role that has usage of the state schema gets the aliases (grant_usage, from version 10
-- on, grants them to roles granted later).
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT g.rolname
          FROM pg_catalog.pg_class c, aclexplode(c.relacl) a, pg_catalog.pg_roles g
         WHERE c.relnamespace = '__SCHEMA__'::regnamespace AND a.grantee <> c.relowner AND g.oid = a.grantee
    LOOP
        PERFORM __SCHEMA__.grant_usage(v_role);
        EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '__DF__', v_role);
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %s TO %I', '__DF__', v_role);
    END LOOP;
END
$$;
