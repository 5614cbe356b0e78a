-- Version 7: the security model of docs/SECURITY.md.
--
-- * Roles are identified by OID, never by name: a dropped and re-created role is a new role.
-- * Granted roles read state through row-level security and change it only through the
--   SECURITY DEFINER functions below (owned by the state owner, search_path pinned). They
--   hold no INSERT, UPDATE or DELETE on any state table.
-- * The functions check session_user (the login), not current_user: a step can SET ROLE or
--   RESET ROLE, but it cannot change the login its connection was opened with.
-- * Executing a run (claiming it, its lease, its checkpoints) requires the run's own login:
--   session_user must be exactly the role that submitted it. Watching, signalling and
--   cancelling a run is allowed to every login that is a member of that role.
-- * Existing installations: every role that held grants on the old tables loses them and gets
--   the new, narrower grants (see the end of this file).

-- ---------------------------------------------------------------------------------------
-- Identity
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION __SCHEMA__.session_oid() RETURNS oid
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user
$$;

-- The roles whose runs the login may see: itself and every role it is a member of.
CREATE FUNCTION __SCHEMA__.visible_oids() RETURNS oid[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(oid), '{}') FROM pg_catalog.pg_roles
     WHERE pg_catalog.pg_has_role(session_user, oid, 'MEMBER')
$$;

ALTER TABLE __SCHEMA__.runs ADD COLUMN submitted_by_oid oid;
UPDATE __SCHEMA__.runs r SET submitted_by_oid = a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = r.submitted_by;
UPDATE __SCHEMA__.runs SET submitted_by_oid = 0 WHERE submitted_by_oid IS NULL;  -- role gone: nobody's
ALTER TABLE __SCHEMA__.runs ALTER COLUMN submitted_by_oid SET NOT NULL;
ALTER TABLE __SCHEMA__.runs ALTER COLUMN submitted_by SET DEFAULT session_user;
ALTER TABLE __SCHEMA__.runs ALTER COLUMN submitted_by_oid SET DEFAULT __SCHEMA__.session_oid();

-- Consecutive takeovers of the run from a runner that died with it; reset when it finishes
-- or parks. Past the limit in take_run the run is quarantined instead of crashing more runners.
ALTER TABLE __SCHEMA__.runs ADD COLUMN crash_claims integer NOT NULL DEFAULT 0;
ALTER TABLE __SCHEMA__.runs DROP CONSTRAINT IF EXISTS runs_status_check;
ALTER TABLE __SCHEMA__.runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled', 'quarantined'));

-- Keys are per role: two roles' runs never share a (flow, key).
DROP INDEX IF EXISTS __SCHEMA__.runs_flow_key;
CREATE UNIQUE INDEX runs_flow_key ON __SCHEMA__.runs (submitted_by_oid, flow_name, run_key)
    WHERE run_key IS NOT NULL;
-- Claims look only at the claiming login's own runs.
DROP INDEX IF EXISTS __SCHEMA__.runs_pending;
DROP INDEX IF EXISTS __SCHEMA__.runs_waiting_wake;
DROP INDEX IF EXISTS __SCHEMA__.runs_running_lease;
CREATE INDEX runs_pending ON __SCHEMA__.runs (submitted_by_oid, created_at) WHERE status = 'pending';
CREATE INDEX runs_waiting_wake ON __SCHEMA__.runs (submitted_by_oid, wake_at) WHERE status = 'waiting';
CREATE INDEX runs_running_lease ON __SCHEMA__.runs (submitted_by_oid, lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_by_flow ON __SCHEMA__.runs (submitted_by_oid, flow_name, created_at);

ALTER TABLE __SCHEMA__.schedules ADD COLUMN owner_oid oid;
UPDATE __SCHEMA__.schedules s SET owner_oid = a.oid FROM pg_catalog.pg_roles a WHERE a.rolname = s.created_by;
UPDATE __SCHEMA__.schedules SET owner_oid = 0, paused = true WHERE owner_oid IS NULL;
ALTER TABLE __SCHEMA__.schedules ALTER COLUMN owner_oid SET NOT NULL;
ALTER TABLE __SCHEMA__.schedules DROP CONSTRAINT schedules_pkey;
ALTER TABLE __SCHEMA__.schedules ADD PRIMARY KEY (owner_oid, name);
ALTER TABLE __SCHEMA__.schedules ADD COLUMN last_error text;

ALTER TABLE __SCHEMA__.workers ADD COLUMN login_oid oid NOT NULL DEFAULT 0;

-- ---------------------------------------------------------------------------------------
-- Row-level security: reads only, keyed on OIDs
-- ---------------------------------------------------------------------------------------

DROP POLICY IF EXISTS runs_by_role ON __SCHEMA__.runs;
DROP POLICY IF EXISTS nodes_by_run ON __SCHEMA__.nodes;
DROP POLICY IF EXISTS events_by_run ON __SCHEMA__.events;
DROP POLICY IF EXISTS signals_by_run ON __SCHEMA__.signals;
ALTER TABLE __SCHEMA__.schedules ENABLE ROW LEVEL SECURITY;
ALTER TABLE __SCHEMA__.workers ENABLE ROW LEVEL SECURITY;

-- The sub-select runs once per statement (an InitPlan), not once per row.
CREATE POLICY runs_visible ON __SCHEMA__.runs FOR SELECT
    USING (submitted_by_oid = ANY ((SELECT __SCHEMA__.visible_oids())::oid[]));
CREATE POLICY nodes_visible ON __SCHEMA__.nodes FOR SELECT
    USING (EXISTS (SELECT 1 FROM __SCHEMA__.runs r WHERE r.run_id = nodes.run_id));
CREATE POLICY events_visible ON __SCHEMA__.events FOR SELECT
    USING (EXISTS (SELECT 1 FROM __SCHEMA__.runs r WHERE r.run_id = events.run_id));
CREATE POLICY signals_visible ON __SCHEMA__.signals FOR SELECT
    USING (EXISTS (SELECT 1 FROM __SCHEMA__.runs r WHERE r.run_id = signals.run_id));
CREATE POLICY schedules_visible ON __SCHEMA__.schedules FOR SELECT
    USING (owner_oid = ANY ((SELECT __SCHEMA__.visible_oids())::oid[]));
CREATE POLICY workers_visible ON __SCHEMA__.workers FOR SELECT
    USING (login_oid = ANY ((SELECT __SCHEMA__.visible_oids())::oid[]));

-- The view is owned by the state owner, who bypasses RLS: it filters explicitly (this works
-- on every supported version, unlike security_invoker, which needs PostgreSQL 15).
CREATE OR REPLACE VIEW __SCHEMA__.progress AS
SELECT r.run_id, r.flow_name, r.run_key, r.status, r.submitted_by,
       count(n.*) FILTER (WHERE n.status = 'completed') AS nodes_completed,
       count(n.*) FILTER (WHERE n.status IN ('running', 'waiting')) AS nodes_active,
       count(n.*) FILTER (WHERE n.status = 'failed') AS nodes_failed,
       (SELECT count(*) FROM jsonb_array_elements(r.graph -> 'nodes') AS g(node)
         WHERE g.node ->> 'kind' IN ('sql', 'http', 'sleep', 'wait_for_schedule', 'wait_for_signal')
       ) AS graph_nodes,
       r.failed_node, r.error, r.created_at, r.updated_at, r.finished_at
FROM __SCHEMA__.runs r LEFT JOIN __SCHEMA__.nodes n USING (run_id)
WHERE r.submitted_by_oid = ANY ((SELECT __SCHEMA__.visible_oids())::oid[])
GROUP BY r.run_id;

-- ---------------------------------------------------------------------------------------
-- Guards used by the functions below (not granted to anyone)
-- ---------------------------------------------------------------------------------------

-- The run, if the login is exactly the role that submitted it; raises otherwise. A run that is
-- not visible to the login reads as absent, so its existence leaks nothing.
CREATE FUNCTION __SCHEMA__.own_run(p_run_id uuid) RETURNS __SCHEMA__.runs
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
BEGIN
    SELECT * INTO v_run FROM __SCHEMA__.runs WHERE run_id = p_run_id;
    IF NOT FOUND OR NOT v_run.submitted_by_oid = ANY (__SCHEMA__.visible_oids()) THEN
        RAISE EXCEPTION 'dbt_durable: no run %', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    IF v_run.submitted_by_oid IS DISTINCT FROM __SCHEMA__.session_oid() THEN
        RAISE EXCEPTION 'dbt_durable: run % belongs to role %; only a connection that logs in as that role may execute it',
              p_run_id, v_run.submitted_by USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN v_run;
END
$$;

-- The run, if the login may watch and steer it (it is a member of the submitting role).
CREATE FUNCTION __SCHEMA__.visible_run(p_run_id uuid) RETURNS __SCHEMA__.runs
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
BEGIN
    SELECT * INTO v_run FROM __SCHEMA__.runs WHERE run_id = p_run_id;
    IF NOT FOUND OR NOT v_run.submitted_by_oid = ANY (__SCHEMA__.visible_oids()) THEN
        RAISE EXCEPTION 'dbt_durable: no run %', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN v_run;
END
$$;

-- The checkpoint fence (see version 6), now also bound to the run's own login.
CREATE OR REPLACE FUNCTION __SCHEMA__.fence(p_run_id uuid, p_owner text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_owner text;
    v_cancel text;
    v_login oid;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1684174884, hashtext(p_run_id::text));
    SELECT lease_owner, cancel_requested, submitted_by_oid INTO v_owner, v_cancel, v_login
      FROM __SCHEMA__.runs WHERE run_id = p_run_id;
    IF v_login IS DISTINCT FROM __SCHEMA__.session_oid() THEN
        RAISE EXCEPTION 'dbt_durable: no run % for this login', p_run_id USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF v_owner IS DISTINCT FROM p_owner THEN
        RAISE EXCEPTION 'dbt_durable: lease on run % was lost to %', p_run_id, coalesce(v_owner, 'nobody')
              USING ERRCODE = 'DU001';
    END IF;
    IF v_cancel IS NOT NULL THEN
        RAISE EXCEPTION 'dbt_durable: run % was cancelled: %', p_run_id, v_cancel USING ERRCODE = 'DU002';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Creating runs
-- ---------------------------------------------------------------------------------------

-- Creates a run submitted by the login, or returns the login's existing run with the same
-- (flow, key). With p_owner the run is created already claimed by that runner (its lease
-- lasts p_ttl seconds), so no worker can take a run its creator is about to execute.
CREATE FUNCTION __SCHEMA__.create_run(
    p_flow_name text, p_run_key text, p_flow_text text, p_graph jsonb, p_graph_hash text,
    p_plan json, p_vars jsonb, p_kind text, p_dbt_args jsonb, p_owner text, p_ttl float8
) RETURNS TABLE (run_id uuid, created boolean, status text, graph_hash text, vars jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
    v_login oid := __SCHEMA__.session_oid();
BEGIN
    IF p_kind NOT IN ('flow', 'dbt_build') THEN
        RAISE EXCEPTION 'dbt_durable: unknown run kind %', p_kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO __SCHEMA__.runs AS r
           (flow_name, run_key, flow_text, graph, graph_hash, plan, vars, kind, dbt_args, status,
            submitted_by, submitted_by_oid, lease_owner, lease_expires_at, started_at)
    VALUES (p_flow_name, p_run_key, p_flow_text, p_graph, p_graph_hash, p_plan, coalesce(p_vars, '{}'),
            p_kind, p_dbt_args, CASE WHEN p_owner IS NULL THEN 'pending' ELSE 'running' END,
            session_user, v_login, p_owner,
            CASE WHEN p_owner IS NOT NULL THEN now() + make_interval(secs => p_ttl) END,
            CASE WHEN p_owner IS NOT NULL THEN now() END)
    ON CONFLICT (submitted_by_oid, flow_name, run_key) WHERE run_key IS NOT NULL DO NOTHING
    RETURNING r.run_id INTO v_id;
    IF v_id IS NOT NULL THEN
        INSERT INTO __SCHEMA__.events (run_id, kind, detail)
        VALUES (v_id, 'run_created', jsonb_build_object('key', p_run_key, 'claimed_by', p_owner));
        RETURN QUERY SELECT v_id, true, r.status, r.graph_hash, r.vars FROM __SCHEMA__.runs r WHERE r.run_id = v_id;
        RETURN;
    END IF;
    RETURN QUERY SELECT r.run_id, false, r.status, r.graph_hash, r.vars FROM __SCHEMA__.runs r
     WHERE r.submitted_by_oid = v_login AND r.flow_name = p_flow_name AND r.run_key = p_run_key;
END
$$;

-- Retires one of the login's runs for a fresh start: an unfinished run is cancelled, and with
-- p_release_key its key is renamed so that a new run can take it.
CREATE FUNCTION __SCHEMA__.retire_run(p_run_id uuid, p_release_key boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM __SCHEMA__.own_run(p_run_id);
    UPDATE __SCHEMA__.runs
       SET run_key = CASE WHEN p_release_key THEN run_key || ':superseded:' || run_id::text ELSE run_key END,
           status = CASE WHEN status IN ('completed', 'cancelled') THEN status ELSE 'cancelled' END,
           cancel_requested = CASE WHEN status IN ('completed', 'cancelled') THEN cancel_requested
                                   ELSE 'superseded by a fresh start' END,
           error = CASE WHEN status IN ('completed', 'cancelled') THEN error ELSE 'superseded by a fresh start' END,
           finished_at = coalesce(finished_at, now()), updated_at = now()
     WHERE run_id = p_run_id;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Executing runs: claims, leases, checkpoints. All require the run's own login.
-- ---------------------------------------------------------------------------------------

-- Takes the lease of one of the login's runs for runner p_owner. The caller holds the run's
-- session advisory lock (its liveness) and has terminated the previous owner's backends.
-- Returns taken = false for a finished run (and a failed or quarantined one unless
-- p_retry_failed). A run taken over from dead runners more than p_max_crashes times in a
-- row is quarantined instead of being run again.
CREATE FUNCTION __SCHEMA__.take_run(
    p_run_id uuid, p_owner text, p_ttl float8, p_retry_failed boolean, p_max_crashes integer
) RETURNS TABLE (taken boolean, status text, cancel_requested text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
    v_crashed boolean;
BEGIN
    PERFORM __SCHEMA__.own_run(p_run_id);
    -- The exclusive side of the checkpoint fence: in-flight checkpoints commit first.
    PERFORM pg_advisory_xact_lock(1684174884, hashtext(p_run_id::text));
    SELECT * INTO v_run FROM __SCHEMA__.runs r WHERE r.run_id = p_run_id FOR UPDATE;
    IF v_run.status IN ('completed', 'cancelled')
       OR (v_run.status IN ('failed', 'quarantined') AND NOT p_retry_failed) THEN
        RETURN QUERY SELECT false, v_run.status, v_run.cancel_requested;
        RETURN;
    END IF;
    v_crashed := v_run.status = 'running' AND v_run.lease_owner IS NOT NULL AND v_run.lease_owner <> p_owner;
    IF v_crashed AND v_run.crash_claims >= p_max_crashes AND NOT p_retry_failed THEN
        UPDATE __SCHEMA__.runs r
           SET status = 'quarantined', lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
               error = format('quarantined: the run was taken over from a runner that stopped with it %s times in a row; '
                              'inspect it, then resume it explicitly (dbt-durable resume %s)', v_run.crash_claims, p_run_id)
         WHERE r.run_id = p_run_id;
        INSERT INTO __SCHEMA__.events (run_id, kind, detail)
        VALUES (p_run_id, 'run_quarantined', jsonb_build_object('crash_claims', v_run.crash_claims));
        RETURN QUERY SELECT false, 'quarantined'::text, v_run.cancel_requested;
        RETURN;
    END IF;
    IF v_run.status IN ('failed', 'quarantined') THEN
        UPDATE __SCHEMA__.nodes n SET status = 'cancelled'
         WHERE n.run_id = p_run_id AND n.status IN ('failed', 'running');
    END IF;
    UPDATE __SCHEMA__.runs r
       SET lease_owner = p_owner, lease_expires_at = now() + make_interval(secs => p_ttl),
           status = 'running', started_at = coalesce(r.started_at, now()), updated_at = now(),
           error = NULL, failed_node = NULL, finished_at = NULL,
           crash_claims = CASE WHEN v_crashed THEN r.crash_claims + 1
                               WHEN v_run.status IN ('failed', 'quarantined') THEN 0 ELSE r.crash_claims END
     WHERE r.run_id = p_run_id;
    IF v_run.lease_owner IS DISTINCT FROM p_owner THEN
        INSERT INTO __SCHEMA__.events (run_id, kind, detail)
        VALUES (p_run_id, 'run_claimed', jsonb_build_object('owner', p_owner, 'previous_owner', v_run.lease_owner));
    END IF;
    RETURN QUERY SELECT true, v_run.status, v_run.cancel_requested;
END
$$;

-- Renews the lease; no row when the lease is no longer p_owner's.
CREATE FUNCTION __SCHEMA__.renew_lease(p_run_id uuid, p_owner text, p_ttl float8)
RETURNS TABLE (cancel_requested text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE __SCHEMA__.runs r SET lease_expires_at = now() + make_interval(secs => p_ttl)
     WHERE r.run_id = p_run_id AND r.lease_owner = p_owner AND r.submitted_by_oid = __SCHEMA__.session_oid()
    RETURNING r.cancel_requested
$$;

-- Hands the run back at once (the owner is kept, so the next runner terminates its backends).
CREATE FUNCTION __SCHEMA__.release_lease(p_run_id uuid, p_owner text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE __SCHEMA__.runs r SET lease_expires_at = now() - interval '1 second', updated_at = now()
     WHERE r.run_id = p_run_id AND r.lease_owner = p_owner AND r.submitted_by_oid = __SCHEMA__.session_oid()
$$;

-- Ends this runner's hold on the run with its outcome; false if the lease was lost.
CREATE FUNCTION __SCHEMA__.finish_run(
    p_run_id uuid, p_owner text, p_status text, p_result jsonb, p_error text, p_failed_node text,
    p_wake_at timestamptz, p_waiting_for text
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_status NOT IN ('completed', 'failed', 'cancelled', 'waiting') THEN
        RAISE EXCEPTION 'dbt_durable: a run cannot finish as %', p_status USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE __SCHEMA__.runs r
       SET status = p_status, result = p_result, error = p_error, failed_node = p_failed_node,
           finished_at = CASE WHEN p_status IN ('completed', 'failed', 'cancelled') THEN now() END,
           wake_at = p_wake_at, waiting_for = p_waiting_for, lease_owner = NULL, lease_expires_at = NULL,
           crash_claims = 0, updated_at = now()
     WHERE r.run_id = p_run_id AND r.lease_owner = p_owner AND r.submitted_by_oid = __SCHEMA__.session_oid();
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO __SCHEMA__.events (run_id, kind, detail)
    VALUES (p_run_id, 'run_' || p_status, jsonb_build_object('error', p_error, 'failed_node', p_failed_node));
    RETURN true;
END
$$;

-- Up to p_limit of the login's runnable runs (queued, due, signalled, or left behind by a
-- runner whose lease expired), marked running with a short lease for the claiming worker.
-- orphaned: the run's lease had expired (its runner is dead, frozen or cut off), so the
-- claimer may stop that runner's backends even if it still holds the run's lock.
CREATE FUNCTION __SCHEMA__.claim_runs(p_ttl float8, p_limit integer)
RETURNS TABLE (run_id uuid, orphaned boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_login oid := __SCHEMA__.session_oid();
BEGIN
    RETURN QUERY
    WITH pending AS (
        SELECT r.run_id, r.created_at AS due, false AS orphaned FROM __SCHEMA__.runs r
         WHERE r.submitted_by_oid = v_login AND r.status = 'pending'
         ORDER BY r.created_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), woken AS (
        SELECT r.run_id, r.wake_at AS due, false AS orphaned FROM __SCHEMA__.runs r
         WHERE r.submitted_by_oid = v_login AND r.status = 'waiting' AND r.wake_at <= now()
         ORDER BY r.wake_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), signalled AS (
        SELECT c.run_id, c.created_at AS due, false AS orphaned FROM __SCHEMA__.runs c
         WHERE c.submitted_by_oid = v_login AND c.status = 'waiting'
           AND (c.cancel_requested IS NOT NULL OR EXISTS (
                SELECT 1 FROM __SCHEMA__.signals g
                 WHERE g.run_id = c.run_id AND g.name = c.waiting_for AND g.consumed_at IS NULL))
         LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), orphaned AS (
        SELECT r.run_id, r.lease_expires_at AS due, true AS orphaned FROM __SCHEMA__.runs r
         WHERE r.submitted_by_oid = v_login AND r.status = 'running' AND r.lease_expires_at < now()
         ORDER BY r.lease_expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ), chosen AS (
        SELECT d.run_id, d.orphaned FROM (SELECT * FROM pending UNION ALL SELECT * FROM woken
                              UNION ALL SELECT * FROM signalled UNION ALL SELECT * FROM orphaned) AS d
         ORDER BY d.due LIMIT p_limit
    )
    UPDATE __SCHEMA__.runs AS r SET status = 'running', lease_expires_at = now() + make_interval(secs => p_ttl),
           updated_at = now()
      FROM chosen WHERE r.run_id = chosen.run_id
    RETURNING r.run_id, chosen.orphaned;
END
$$;

-- Seconds until the earliest of the login's parked runs is due.
CREATE FUNCTION __SCHEMA__.next_wake() RETURNS float8
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT extract(epoch FROM min(wake_at) - now())::float8 FROM __SCHEMA__.runs
     WHERE submitted_by_oid = __SCHEMA__.session_oid() AND status = 'waiting' AND wake_at IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION __SCHEMA__.checkpoint_node(
    p_run_id uuid, p_owner text, p_exec_key text, p_node_id text, p_kind text,
    p_attempts integer, p_result jsonb, p_started_at timestamptz
) RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM __SCHEMA__.fence(p_run_id, p_owner);
    INSERT INTO __SCHEMA__.nodes AS n
           (run_id, exec_key, node_id, kind, status, attempts, result, started_at, finished_at)
    VALUES (p_run_id, p_exec_key, p_node_id, p_kind, 'completed', p_attempts, p_result,
            p_started_at, clock_timestamp())
    ON CONFLICT (run_id, exec_key) DO UPDATE
       SET status = 'completed', attempts = EXCLUDED.attempts, result = EXCLUDED.result,
           error = NULL, wake_at = NULL, finished_at = EXCLUDED.finished_at;
END
$$;

CREATE OR REPLACE FUNCTION __SCHEMA__.mark_node(
    p_run_id uuid, p_owner text, p_exec_key text, p_node_id text, p_kind text,
    p_status text, p_attempts integer, p_error text, p_wake_at timestamptz
) RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_status NOT IN ('running', 'waiting', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'dbt_durable: a node cannot be marked %', p_status USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM __SCHEMA__.fence(p_run_id, p_owner);
    INSERT INTO __SCHEMA__.nodes AS n
           (run_id, exec_key, node_id, kind, status, attempts, error, wake_at, finished_at)
    VALUES (p_run_id, p_exec_key, p_node_id, p_kind, p_status, p_attempts, p_error, p_wake_at,
            CASE WHEN p_status = 'failed' THEN clock_timestamp() END)
    ON CONFLICT (run_id, exec_key) DO UPDATE
       SET status = EXCLUDED.status, attempts = EXCLUDED.attempts, error = EXCLUDED.error,
           wake_at = coalesce(n.wake_at, EXCLUDED.wake_at), finished_at = EXCLUDED.finished_at;
    INSERT INTO __SCHEMA__.events (run_id, kind, exec_key, detail)
    VALUES (p_run_id, 'node_' || p_status, p_exec_key,
            jsonb_strip_nulls(jsonb_build_object('attempts', p_attempts, 'error', p_error,
                                                 'wake_at', p_wake_at)));
END
$$;

-- Takes the oldest buffered signal p_name of the run for wait node p_exec_key (fenced).
CREATE FUNCTION __SCHEMA__.consume_signal(p_run_id uuid, p_owner text, p_name text, p_exec_key text)
RETURNS TABLE (payload jsonb, sent_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM __SCHEMA__.fence(p_run_id, p_owner);
    RETURN QUERY
    UPDATE __SCHEMA__.signals s SET consumed_by = p_exec_key, consumed_at = now()
     WHERE (s.run_id, s.signal_id) = (
            SELECT g.run_id, g.signal_id FROM __SCHEMA__.signals g
             WHERE g.run_id = p_run_id AND g.name = p_name AND g.consumed_at IS NULL
             ORDER BY g.signal_id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING s.payload, s.sent_at;
END
$$;

-- An event in the history of one of the login's runs (retries, progress notes).
CREATE FUNCTION __SCHEMA__.record_event(p_run_id uuid, p_kind text, p_detail jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM __SCHEMA__.own_run(p_run_id);
    IF p_kind LIKE 'run\_%' THEN  -- lifecycle events are written by the lifecycle functions only
        RAISE EXCEPTION 'dbt_durable: event kind % is reserved', p_kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO __SCHEMA__.events (run_id, kind, detail) VALUES (p_run_id, p_kind, p_detail);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Steering runs: every login that is a member of the submitting role
-- ---------------------------------------------------------------------------------------

-- Buffered: the signal waits in the table until the run's wait_for_signal consumes it.
CREATE OR REPLACE FUNCTION __SCHEMA__.signal(p_run_id uuid, p_name text, p_payload jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
BEGIN
    PERFORM __SCHEMA__.visible_run(p_run_id);
    IF coalesce(p_name, '') = '' THEN
        RAISE EXCEPTION 'dbt_durable: a signal needs a name' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(p_payload::text) > 1048576 THEN
        RAISE EXCEPTION 'dbt_durable: signal payload of % bytes is over the cap of 1048576 bytes',
              octet_length(p_payload::text)
              USING ERRCODE = 'program_limit_exceeded',
                    HINT = 'store large data in a table and send its key';
    END IF;
    INSERT INTO __SCHEMA__.signals (run_id, name, payload, sent_by) VALUES (p_run_id, p_name, p_payload, session_user)
    RETURNING signal_id INTO v_id;
    PERFORM pg_notify('dbt_durable_signal', p_run_id::text);
    RETURN v_id;
END
$$;

-- Cancel stops the run at the next node boundary; the runner interrupts running statements.
-- A failed or quarantined run is cancelled at once.
CREATE OR REPLACE FUNCTION __SCHEMA__.cancel(p_run_id uuid, p_reason text DEFAULT 'cancelled')
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_status text;
BEGIN
    PERFORM __SCHEMA__.visible_run(p_run_id);
    SELECT status INTO v_status FROM __SCHEMA__.runs WHERE run_id = p_run_id FOR UPDATE;
    IF v_status IN ('completed', 'cancelled') THEN
        RETURN v_status;
    END IF;
    IF v_status IN ('pending', 'failed', 'quarantined') OR v_status = 'waiting' AND NOT EXISTS (
        SELECT 1 FROM __SCHEMA__.runs WHERE run_id = p_run_id AND lease_expires_at > now()
    ) THEN
        UPDATE __SCHEMA__.runs
           SET status = 'cancelled', cancel_requested = p_reason, error = 'cancelled: ' || p_reason,
               finished_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
         WHERE run_id = p_run_id;
        INSERT INTO __SCHEMA__.events (run_id, kind, detail)
        VALUES (p_run_id, 'run_cancelled', jsonb_build_object('reason', p_reason, 'by', session_user));
        RETURN 'cancelled';
    END IF;
    UPDATE __SCHEMA__.runs SET cancel_requested = p_reason, updated_at = now() WHERE run_id = p_run_id;
    RETURN 'cancelling';
END
$$;

-- ---------------------------------------------------------------------------------------
-- Schedules: each login owns its own; their runs are submitted by (and run as) the owner
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION __SCHEMA__.save_schedule(
    p_name text, p_cron text, p_tz text, p_target jsonb, p_catchup text, p_max_catchup integer, p_overlap text
) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_created boolean;
BEGIN
    INSERT INTO __SCHEMA__.schedules AS s
           (owner_oid, name, cron, tz, target, catchup, max_catchup, overlap, created_by)
    VALUES (__SCHEMA__.session_oid(), p_name, p_cron, p_tz, p_target, p_catchup, p_max_catchup, p_overlap, session_user)
    ON CONFLICT (owner_oid, name) DO UPDATE
       SET cron = EXCLUDED.cron, tz = EXCLUDED.tz, target = EXCLUDED.target, catchup = EXCLUDED.catchup,
           max_catchup = EXCLUDED.max_catchup, overlap = EXCLUDED.overlap, last_error = NULL, updated_at = now()
    RETURNING (xmax = 0) INTO v_created;
    RETURN v_created;
END
$$;

CREATE FUNCTION __SCHEMA__.pause_schedule(p_name text, p_paused boolean) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE __SCHEMA__.schedules SET paused = p_paused, updated_at = now()
     WHERE owner_oid = __SCHEMA__.session_oid() AND name = p_name;
    RETURN FOUND;
END
$$;

CREATE FUNCTION __SCHEMA__.remove_schedule(p_name text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM __SCHEMA__.schedules WHERE owner_oid = __SCHEMA__.session_oid() AND name = p_name;
    RETURN FOUND;
END
$$;

-- The login's unpaused schedules, locked until the caller's transaction ends (SKIP LOCKED:
-- two workers never fire the same schedule at once).
CREATE FUNCTION __SCHEMA__.lock_schedules()
RETURNS TABLE (name text, cron text, tz text, target jsonb, catchup text, max_catchup integer,
               last_fired_slot timestamptz, created_at timestamptz, overlap text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.name, s.cron, s.tz, s.target, s.catchup, s.max_catchup, s.last_fired_slot, s.created_at, s.overlap
      FROM __SCHEMA__.schedules s
     WHERE s.owner_oid = __SCHEMA__.session_oid() AND NOT s.paused
     ORDER BY s.name FOR UPDATE SKIP LOCKED
$$;

-- Records that the login's schedule fired up to p_slot (or, with p_error, that it is broken:
-- a broken schedule is paused with its error, so it never stops a worker).
CREATE FUNCTION __SCHEMA__.schedule_fired(p_name text, p_slot timestamptz, p_error text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE __SCHEMA__.schedules
       SET last_fired_slot = CASE WHEN p_slot IS NULL THEN last_fired_slot ELSE greatest(last_fired_slot, p_slot) END,
           last_error = p_error, paused = paused OR p_error IS NOT NULL, updated_at = now()
     WHERE owner_oid = __SCHEMA__.session_oid() AND name = p_name
$$;

-- ---------------------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION __SCHEMA__.worker_beat(p_worker_id text, p_hostname text, p_pid integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO __SCHEMA__.workers AS w (worker_id, hostname, pid, login_oid)
    VALUES (p_worker_id, p_hostname, p_pid, __SCHEMA__.session_oid())
    ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()
     WHERE w.login_oid = __SCHEMA__.session_oid();
END
$$;

CREATE FUNCTION __SCHEMA__.worker_gone(p_worker_id text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM __SCHEMA__.workers WHERE worker_id = p_worker_id AND login_oid = __SCHEMA__.session_oid()
$$;

-- ---------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------

DROP FUNCTION IF EXISTS __SCHEMA__.grant_usage(name);

-- What a role needs to start, execute, watch, signal and cancel its own runs: SELECT on the
-- state (filtered by RLS) and EXECUTE on the runtime's functions. Nothing goes to PUBLIC.
CREATE FUNCTION __SCHEMA__.grant_usage(p_role name) RETURNS void
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
        'worker_beat(text, text, integer)', 'worker_gone(text)'
    ] LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.%s TO %I', '__SCHEMA__', v_fn, p_role);
    END LOOP;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA __SCHEMA__ FROM PUBLIC;

-- Upgrade: every role granted the old, wider privileges (INSERT/UPDATE on the tables, EXECUTE
-- on every function) keeps only the new grants.
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT g.rolname
          FROM pg_catalog.pg_class c, aclexplode(c.relacl) a, pg_catalog.pg_roles g
         WHERE c.relnamespace = '__SCHEMA__'::regnamespace AND a.grantee <> c.relowner AND g.oid = a.grantee
    LOOP
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %s FROM %I', '__SCHEMA__', v_role);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %s FROM %I', '__SCHEMA__', v_role);
        EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %s FROM %I', '__SCHEMA__', v_role);
        PERFORM __SCHEMA__.grant_usage(v_role);
    END LOOP;
END
$$;
