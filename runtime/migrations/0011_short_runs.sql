-- Version 11: short runs in one transaction, and grants that follow the functions.
--
-- A worker takes pending runs of its login with take_pending() (row locks held by its
-- transaction, SKIP LOCKED), runs each one-step run right there, and completes it with
-- complete_pending() in the same transaction: the claim, the step, the checkpoint and the
-- run's outcome commit together, many runs per commit. A worker that dies rolls all of it
-- back with its connection, and the runs are pending again at once. Runs that are not one
-- plain step are handed to the ordinary path with hand_over().

-- Up to p_limit of the login's pending runs, locked until the caller's transaction ends.
CREATE FUNCTION __SCHEMA__.take_pending(p_limit integer)
RETURNS TABLE (run_id uuid, kind text, plan text, flow_text text, vars jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.run_id, r.kind, r.plan::text, r.flow_text, r.vars
      FROM __SCHEMA__.runs r
     WHERE r.submitted_by_oid = __SCHEMA__.session_oid() AND r.status = 'pending'
     ORDER BY r.created_at LIMIT p_limit
       FOR UPDATE SKIP LOCKED
$$;

-- Completes (or, with p_error, fails) a run taken with take_pending in this transaction: its
-- one node execution, the run's outcome and its event, in one call.
CREATE FUNCTION __SCHEMA__.finish_pending(
    p_run_id uuid, p_exec_key text, p_node_id text, p_result jsonb, p_error text, p_started_at timestamptz
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_status text := CASE WHEN p_error IS NULL THEN 'completed' ELSE 'failed' END;
BEGIN
    UPDATE __SCHEMA__.runs r
       SET status = v_status, result = p_result, error = p_error,
           failed_node = CASE WHEN p_error IS NOT NULL THEN p_exec_key END,
           started_at = coalesce(r.started_at, p_started_at), finished_at = clock_timestamp(),
           updated_at = clock_timestamp()
     WHERE r.run_id = p_run_id AND r.status = 'pending' AND r.submitted_by_oid = __SCHEMA__.session_oid();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dbt_durable: run % is not a pending run of this login', p_run_id USING ERRCODE = 'DU001';
    END IF;
    INSERT INTO __SCHEMA__.nodes (run_id, exec_key, node_id, kind, status, attempts, result, error, started_at, finished_at)
    VALUES (p_run_id, p_exec_key, p_node_id, 'sql', v_status, 1, p_result, p_error, p_started_at, clock_timestamp())
    ON CONFLICT (run_id, exec_key) DO UPDATE
       SET status = EXCLUDED.status, attempts = EXCLUDED.attempts, result = EXCLUDED.result,
           error = EXCLUDED.error, wake_at = NULL, started_at = EXCLUDED.started_at,
           finished_at = EXCLUDED.finished_at;
    INSERT INTO __SCHEMA__.events (run_id, kind, detail)
    VALUES (p_run_id, 'run_' || v_status, jsonb_build_object('error', p_error, 'failed_node',
            CASE WHEN p_error IS NOT NULL THEN p_exec_key END, 'one_transaction', true));
END
$$;

-- Claims runs taken with take_pending for the ordinary path (running, with a short lease).
CREATE FUNCTION __SCHEMA__.hand_over(p_run_ids uuid[], p_ttl float8) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE __SCHEMA__.runs r SET status = 'running', lease_expires_at = now() + make_interval(secs => p_ttl),
           updated_at = now()
     WHERE r.run_id = ANY (p_run_ids) AND r.status = 'pending' AND r.submitted_by_oid = __SCHEMA__.session_oid()
$$;

-- Grants follow the functions: every function of the schema but the internal ones, so a
-- later migration only has to run grant_usage again for the roles that have usage.
CREATE OR REPLACE FUNCTION __SCHEMA__.grant_usage(p_role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_fn regprocedure;
    v_table regclass;
    v_alias name;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '__SCHEMA__', p_role);
    -- Tables under row-level security, the progress view (it filters by the same rule) and
    -- the schema's version; a new table is readable only once it has its policies.
    FOR v_table IN
        SELECT c.oid::regclass FROM pg_catalog.pg_class c
         WHERE c.relnamespace = '__SCHEMA__'::regnamespace
           AND (c.relkind = 'r' AND (c.relrowsecurity OR c.relname = 'schema_version')
                OR c.relkind = 'v' AND c.relname = 'progress')
    LOOP
        EXECUTE format('GRANT SELECT ON %s TO %I', v_table, p_role);
    END LOOP;
    FOR v_fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = '__SCHEMA__'::regnamespace AND p.prokind = 'f'
           AND p.prorettype <> 'pg_catalog.trigger'::regtype
           AND p.proname NOT IN ('own_run', 'visible_run', 'fence', 'grant_usage')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', v_fn, p_role);
    END LOOP;
    -- pg_durable's names, if migrate --df-aliases made them (see 0010).
    FOR v_alias IN
        SELECT n.nspname FROM pg_catalog.pg_namespace n
         WHERE pg_catalog.obj_description(n.oid, 'pg_namespace') = 'dbt-durable df aliases of ' || '__SCHEMA__'
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_alias, p_role);
        EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %I TO %I', v_alias, p_role);
    END LOOP;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;

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
    END LOOP;
END
$$;
