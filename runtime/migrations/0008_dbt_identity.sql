-- Version 8: what durable dbt models need (docs/dbt.md).
--
-- * A dbt process that resumes one of its login's unfinished runs claims it in the same
--   statement that finds it still resumable, so no worker can take it in between (a run it
--   creates is claimed by create_run already).
-- * A failed run whose flow changed only in nodes that have not completed continues with the
--   new definition ("fix and re-run"): the definition is swapped under the same claim, and
--   only if the run still has the definition the caller compared against.
-- Same rules as version 7: SECURITY DEFINER, search_path pinned, the login checked.

-- Claims the login's run p_run_id for runner p_owner if it is resumable (pending, waiting or
-- failed) and still has graph p_expected_hash. A running run is left alone: its runner is
-- alive, or its lease expires and the normal takeover (take_run) applies. With p_flow_text the
-- run (which must be failed) gets that definition: its completed nodes are kept, every other
-- node row is dropped. Returns false when the run was not claimed.
CREATE FUNCTION __SCHEMA__.claim_for_resume(
    p_run_id uuid, p_owner text, p_ttl float8, p_expected_hash text,
    p_flow_text text, p_graph jsonb, p_graph_hash text, p_plan json
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
    v_kept integer;
BEGIN
    PERFORM __SCHEMA__.own_run(p_run_id);
    -- The exclusive side of the checkpoint fence, as in take_run.
    PERFORM pg_advisory_xact_lock(1684174884, hashtext(p_run_id::text));
    SELECT * INTO v_run FROM __SCHEMA__.runs r WHERE r.run_id = p_run_id FOR UPDATE;
    IF v_run.status NOT IN ('pending', 'waiting', 'failed') OR v_run.graph_hash IS DISTINCT FROM p_expected_hash
       OR v_run.kind <> 'flow' THEN
        RETURN false;
    END IF;
    IF p_flow_text IS NOT NULL THEN
        IF v_run.status <> 'failed' THEN
            RETURN false;
        END IF;
        DELETE FROM __SCHEMA__.nodes n WHERE n.run_id = p_run_id AND n.status <> 'completed';
        SELECT count(*) INTO v_kept FROM __SCHEMA__.nodes n WHERE n.run_id = p_run_id;
        UPDATE __SCHEMA__.runs r
           SET flow_text = p_flow_text, graph = p_graph, graph_hash = p_graph_hash, plan = p_plan
         WHERE r.run_id = p_run_id;
        INSERT INTO __SCHEMA__.events (run_id, kind, detail)
        VALUES (p_run_id, 'run_replanned', jsonb_build_object('previous_hash', v_run.graph_hash,
                                                              'graph_hash', p_graph_hash, 'kept_nodes', v_kept));
    ELSIF v_run.status = 'failed' THEN
        UPDATE __SCHEMA__.nodes n SET status = 'cancelled'
         WHERE n.run_id = p_run_id AND n.status IN ('failed', 'running');
    END IF;
    UPDATE __SCHEMA__.runs r
       SET status = 'running', lease_owner = p_owner, lease_expires_at = now() + make_interval(secs => p_ttl),
           started_at = coalesce(r.started_at, now()), error = NULL, failed_node = NULL, finished_at = NULL,
           crash_claims = CASE WHEN v_run.status = 'failed' THEN 0 ELSE r.crash_claims END, updated_at = now()
     WHERE r.run_id = p_run_id;
    INSERT INTO __SCHEMA__.events (run_id, kind, detail)
    VALUES (p_run_id, 'run_claimed', jsonb_build_object('owner', p_owner, 'previous_status', v_run.status,
                                                        'by', 'resume'));
    RETURN true;
END
$$;

-- Every role that already has usage gets the new function too.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT g.rolname
          FROM pg_catalog.pg_proc p, aclexplode(p.proacl) a, pg_catalog.pg_roles g
         WHERE p.pronamespace = '__SCHEMA__'::regnamespace AND p.proname = 'create_run'
           AND a.grantee <> p.proowner AND g.oid = a.grantee
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.claim_for_resume(uuid, text, float8, text, text, jsonb, text, json) TO %I',
                       '__SCHEMA__', v_role);
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION __SCHEMA__.claim_for_resume(uuid, text, float8, text, text, jsonb, text, json) FROM PUBLIC;

-- grant_usage grants the new function as well (same body as version 7, plus claim_for_resume).
CREATE OR REPLACE FUNCTION __SCHEMA__.grant_usage(p_role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_fn text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT SELECT ON %s.runs, %s.nodes, %s.events, %s.signals, %s.schedules, %s.workers, '
                   '%s.progress, %s.schema_version TO %I', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__',
                   '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', p_role);
    FOREACH v_fn IN ARRAY ARRAY[
        'session_oid()', 'visible_oids()', 'status(uuid)', 'result(uuid)', 'signal(uuid, text, jsonb)',
        'cancel(uuid, text)', 'create_run(text, text, text, jsonb, text, json, jsonb, text, jsonb, text, float8)',
        'retire_run(uuid, boolean)', 'take_run(uuid, text, float8, boolean, integer)',
        'renew_lease(uuid, text, float8)', 'release_lease(uuid, text)',
        'finish_run(uuid, text, text, jsonb, text, text, timestamptz, text)', 'claim_runs(float8, integer)',
        'next_wake()', 'checkpoint_node(uuid, text, text, text, text, integer, jsonb, timestamptz)',
        'mark_node(uuid, text, text, text, text, text, integer, text, timestamptz)',
        'consume_signal(uuid, text, text, text)', 'record_event(uuid, text, jsonb)',
        'save_schedule(text, text, text, jsonb, text, integer, text)', 'pause_schedule(text, boolean)',
        'remove_schedule(text)', 'lock_schedules()', 'schedule_fired(text, timestamptz, text)',
        'worker_beat(text, text, integer)', 'worker_gone(text)',
        'claim_for_resume(uuid, text, float8, text, text, jsonb, text, json)'
    ] LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.%s TO %I', '__SCHEMA__', v_fn, p_role);
    END LOOP;
END
$$;
