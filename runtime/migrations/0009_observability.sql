-- Version 9: seeing and steering runs (the dashboard and the CLI views), and retention.
--
-- Every function follows the rules of version 7: SECURITY DEFINER, owned by the state owner,
-- search_path pinned, every name qualified, and the login checked through visible_run (the
-- login may steer the runs of every role it is a member of, as with signal and cancel). A run
-- still executes only on its own login: these functions only hand it back to the queue.

-- Loop iterations of a finished run compacted into one row per node: how many completed
-- executions were deleted, and when the first of them started.
CREATE TABLE __SCHEMA__.loop_summaries (
    run_id         uuid NOT NULL REFERENCES __SCHEMA__.runs ON DELETE CASCADE,
    node_id        text NOT NULL,
    compacted      bigint NOT NULL,
    first_started  timestamptz,
    PRIMARY KEY (run_id, node_id)
);
ALTER TABLE __SCHEMA__.loop_summaries ENABLE ROW LEVEL SECURITY;
CREATE POLICY loop_summaries_visible ON __SCHEMA__.loop_summaries FOR SELECT
    USING (EXISTS (SELECT 1 FROM __SCHEMA__.runs r WHERE r.run_id = loop_summaries.run_id));

-- The compacted loop counts of a run the login may see (read through a function, so the
-- views need no grant on the table itself).
CREATE FUNCTION __SCHEMA__.loop_counts(p_run_id uuid)
RETURNS TABLE (node_id text, compacted bigint, first_started timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.node_id, s.compacted, s.first_started FROM __SCHEMA__.loop_summaries s
      JOIN __SCHEMA__.runs r ON r.run_id = s.run_id
     WHERE s.run_id = p_run_id AND r.submitted_by_oid = ANY (__SCHEMA__.visible_oids())
$$;

-- Finished runs by age, for retention.
CREATE INDEX runs_finished ON __SCHEMA__.runs (finished_at) WHERE status IN ('completed', 'failed', 'cancelled');

-- ---------------------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------------------

-- Deletes finished runs (completed, failed, cancelled) that finished more than p_older_than
-- ago, with their nodes, events, signals and loop summaries. One call deletes at most
-- p_max_nodes node rows and p_max_runs runs, so each call is a short transaction: call it
-- until it returns zeros. A big run is emptied over several calls and deleted by the last.
-- Runs locked by someone else are skipped, never waited for.
CREATE FUNCTION __SCHEMA__.prune_runs(p_older_than interval, p_max_runs integer, p_max_nodes integer)
RETURNS TABLE (runs_deleted integer, nodes_deleted bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run uuid;
    v_runs integer := 0;
    v_nodes bigint := 0;
    v_count bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'dbt_durable: prune needs a non-negative age' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR v_run IN
        SELECT r.run_id FROM __SCHEMA__.runs r
         WHERE r.status IN ('completed', 'failed', 'cancelled') AND r.finished_at < now() - p_older_than
           AND r.submitted_by_oid = ANY (__SCHEMA__.visible_oids())
         ORDER BY r.finished_at LIMIT greatest(p_max_runs, 1) FOR UPDATE SKIP LOCKED
    LOOP
        DELETE FROM __SCHEMA__.nodes n
         WHERE n.run_id = v_run AND n.exec_key IN (
               SELECT m.exec_key FROM __SCHEMA__.nodes m WHERE m.run_id = v_run
                LIMIT greatest(p_max_nodes - v_nodes, 0));
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_nodes := v_nodes + v_count;
        IF EXISTS (SELECT 1 FROM __SCHEMA__.nodes n WHERE n.run_id = v_run) THEN
            EXIT;  -- the node budget is spent; the next call goes on with this run
        END IF;
        DELETE FROM __SCHEMA__.runs r WHERE r.run_id = v_run;  -- events, signals, summaries cascade
        v_runs := v_runs + 1;
    END LOOP;
    RETURN QUERY SELECT v_runs, v_nodes;
END
$$;

-- Compacts the loop iterations of a completed or cancelled run: every execution of a node
-- inside a loop except its latest is deleted and counted in loop_summaries (a failed run may
-- be resumed, and a resume needs its iterations, so it is never compacted). At most
-- p_max_nodes rows per call; returns how many were deleted (call it until it returns 0).
CREATE FUNCTION __SCHEMA__.compact_run(p_run_id uuid, p_max_nodes integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
    v_count bigint;
BEGIN
    v_run := __SCHEMA__.visible_run(p_run_id);
    IF v_run.status NOT IN ('completed', 'cancelled') THEN
        RAISE EXCEPTION 'dbt_durable: run % is %; only completed or cancelled runs are compacted', p_run_id, v_run.status
              USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    WITH latest AS (
        SELECT DISTINCT ON (n.node_id) n.node_id, n.exec_key FROM __SCHEMA__.nodes n
         WHERE n.run_id = p_run_id AND strpos(n.exec_key, '#') > 0
         ORDER BY n.node_id, n.started_at DESC, n.exec_key DESC
    ), victims AS (
        SELECT n.exec_key FROM __SCHEMA__.nodes n
         WHERE n.run_id = p_run_id AND strpos(n.exec_key, '#') > 0 AND n.status = 'completed'
           AND NOT EXISTS (SELECT 1 FROM latest l WHERE l.exec_key = n.exec_key)
         LIMIT greatest(p_max_nodes, 1)
    ), gone AS (
        DELETE FROM __SCHEMA__.nodes n USING victims v
         WHERE n.run_id = p_run_id AND n.exec_key = v.exec_key
        RETURNING n.node_id, n.started_at
    ), counted AS (
        INSERT INTO __SCHEMA__.loop_summaries AS s (run_id, node_id, compacted, first_started)
        SELECT p_run_id, g.node_id, count(*), min(g.started_at) FROM gone g GROUP BY g.node_id
        ON CONFLICT (run_id, node_id) DO UPDATE
           SET compacted = s.compacted + EXCLUDED.compacted,
               first_started = least(s.first_started, EXCLUDED.first_started)
        RETURNING s.compacted
    )
    SELECT count(*) INTO v_count FROM gone;
    RETURN v_count;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Steering
-- ---------------------------------------------------------------------------------------

-- Hands a failed or quarantined run back to the queue: a worker of its own login resumes it
-- from its failed node (completed nodes never run again).
CREATE FUNCTION __SCHEMA__.requeue_run(p_run_id uuid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
BEGIN
    PERFORM __SCHEMA__.visible_run(p_run_id);
    SELECT * INTO v_run FROM __SCHEMA__.runs r WHERE r.run_id = p_run_id FOR UPDATE;
    IF v_run.status NOT IN ('failed', 'quarantined') THEN
        RETURN v_run.status;
    END IF;
    UPDATE __SCHEMA__.nodes n SET status = 'cancelled'
     WHERE n.run_id = p_run_id AND n.status IN ('failed', 'running');
    UPDATE __SCHEMA__.runs r
       SET status = 'pending', error = NULL, failed_node = NULL, finished_at = NULL, crash_claims = 0,
           lease_expires_at = NULL, updated_at = now()
     WHERE r.run_id = p_run_id;
    INSERT INTO __SCHEMA__.events (run_id, kind, detail)
    VALUES (p_run_id, 'run_requeued', jsonb_build_object('by', session_user, 'was', v_run.status));
    PERFORM pg_notify('dbt_durable_wake', p_run_id::text);
    RETURN 'pending';
END
$$;

-- Restarts a finished (or failed, cancelled, quarantined) flow run from a node: the
-- executions of p_node_ids (the caller passes the node and every node after it in the flow's
-- order, computed from the run's own graph) are deleted and the run is queued again, so those
-- nodes run anew while the nodes before keep their checkpoints and results. A run whose loop
-- iterations were compacted cannot be restarted (its loops could not be replayed).
CREATE FUNCTION __SCHEMA__.restart_run(p_run_id uuid, p_node_ids text[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
    v_count bigint;
BEGIN
    PERFORM __SCHEMA__.visible_run(p_run_id);
    SELECT * INTO v_run FROM __SCHEMA__.runs r WHERE r.run_id = p_run_id FOR UPDATE;
    IF v_run.kind <> 'flow' THEN
        RAISE EXCEPTION 'dbt_durable: run % is a durable dbt build; resume it, or start a new build', p_run_id
              USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF v_run.status IN ('pending', 'running')
       OR v_run.status = 'waiting' AND v_run.lease_expires_at > now() THEN
        RAISE EXCEPTION 'dbt_durable: run % is %; cancel it first, or wait until it ends', p_run_id, v_run.status
              USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (SELECT 1 FROM __SCHEMA__.loop_summaries s WHERE s.run_id = p_run_id) THEN
        RAISE EXCEPTION 'dbt_durable: the loop iterations of run % were compacted, so it cannot be restarted', p_run_id
              USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'start a new run of the flow';
    END IF;
    DELETE FROM __SCHEMA__.nodes n WHERE n.run_id = p_run_id AND n.node_id = ANY (p_node_ids);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    UPDATE __SCHEMA__.nodes n SET status = 'cancelled'
     WHERE n.run_id = p_run_id AND n.status IN ('failed', 'running');
    UPDATE __SCHEMA__.runs r
       SET status = 'pending', result = NULL, error = NULL, failed_node = NULL, finished_at = NULL,
           cancel_requested = NULL, wake_at = NULL, waiting_for = NULL, crash_claims = 0,
           lease_expires_at = NULL, updated_at = now()
     WHERE r.run_id = p_run_id;
    INSERT INTO __SCHEMA__.events (run_id, kind, detail)
    VALUES (p_run_id, 'run_restarted',
            jsonb_build_object('by', session_user, 'was', v_run.status, 'from_node', p_node_ids[1],
                               'executions_deleted', v_count));
    PERFORM pg_notify('dbt_durable_wake', p_run_id::text);
    RETURN v_count;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION __SCHEMA__.grant_usage(p_role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_fn text;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT SELECT ON %s.runs, %s.nodes, %s.events, %s.signals, %s.schedules, %s.workers, '
                   '%s.progress, %s.schema_version, %s.loop_summaries TO %I', '__SCHEMA__', '__SCHEMA__',
                   '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__',
                   '__SCHEMA__', p_role);
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
        'claim_for_resume(uuid, text, float8, text, text, jsonb, text, json)',
        'prune_runs(interval, integer, integer)', 'compact_run(uuid, integer)', 'requeue_run(uuid)',
        'restart_run(uuid, text[])', 'loop_counts(uuid)'
    ] LOOP
        IF pg_catalog.to_regprocedure(format('%s.%s', '__SCHEMA__', v_fn)) IS NOT NULL THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s.%s TO %I', '__SCHEMA__', v_fn, p_role);
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA __SCHEMA__ FROM PUBLIC;

-- Existing installations: every role already granted usage gets the new functions and table.
-- (grant_usage keeps every function of versions 7 and 8; a name that does not exist is skipped.)
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
