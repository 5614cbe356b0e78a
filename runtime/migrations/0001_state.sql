-- dbt-durable state schema, version 1.
-- __SCHEMA__ is replaced by the quoted schema name (default "dbt_durable").
-- Every state table's key begins with run_id, so the state can be distributed by run.

CREATE TABLE __SCHEMA__.runs (
    run_id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    flow_name         text NOT NULL,
    run_key           text,
    flow_text         text NOT NULL,
    graph             jsonb NOT NULL,
    graph_hash        text NOT NULL,
    vars              jsonb NOT NULL DEFAULT '{}',
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')),
    submitted_by      name NOT NULL DEFAULT current_user,
    lease_owner       text,
    lease_expires_at  timestamptz,
    wake_at           timestamptz,
    cancel_requested  text,
    result            jsonb,
    error             text,
    failed_node       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);

-- One live run per (flow, key); finished runs keep their key for idempotent starts.
CREATE UNIQUE INDEX runs_flow_key ON __SCHEMA__.runs (flow_name, run_key) WHERE run_key IS NOT NULL;
CREATE INDEX runs_claimable ON __SCHEMA__.runs (status, wake_at) WHERE status IN ('pending', 'running', 'waiting');

-- One row per node execution; loop iterations get their own exec_key (node id + "#" + iteration).
CREATE TABLE __SCHEMA__.nodes (
    run_id       uuid NOT NULL REFERENCES __SCHEMA__.runs ON DELETE CASCADE,
    exec_key     text NOT NULL,
    node_id      text NOT NULL,
    kind         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'cancelled')),
    attempts     integer NOT NULL DEFAULT 0,
    result       jsonb,
    error        text,
    wake_at      timestamptz,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (run_id, exec_key)
);

-- Append-only history, for audit and the UI.
CREATE TABLE __SCHEMA__.events (
    run_id    uuid NOT NULL REFERENCES __SCHEMA__.runs ON DELETE CASCADE,
    event_id  bigint GENERATED ALWAYS AS IDENTITY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind      text NOT NULL,
    exec_key  text,
    detail    jsonb,
    PRIMARY KEY (run_id, event_id)
);

-- Signals are buffered until a wait_for_signal consumes them; none is ever dropped.
CREATE TABLE __SCHEMA__.signals (
    run_id       uuid NOT NULL REFERENCES __SCHEMA__.runs ON DELETE CASCADE,
    signal_id    bigint GENERATED ALWAYS AS IDENTITY,
    name         text NOT NULL,
    payload      jsonb,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    sent_by      name NOT NULL DEFAULT current_user,
    consumed_by  text,
    consumed_at  timestamptz,
    PRIMARY KEY (run_id, signal_id)
);

CREATE TABLE __SCHEMA__.schedules (
    name             text PRIMARY KEY,
    cron             text NOT NULL,
    tz               text NOT NULL DEFAULT 'UTC',
    target           jsonb NOT NULL,
    catchup          text NOT NULL DEFAULT 'latest' CHECK (catchup IN ('none', 'latest', 'all')),
    max_catchup      integer NOT NULL DEFAULT 10,
    paused           boolean NOT NULL DEFAULT false,
    last_fired_slot  timestamptz,
    created_by       name NOT NULL DEFAULT current_user,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE __SCHEMA__.workers (
    worker_id     text PRIMARY KEY,
    hostname      text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------
-- Functions for people who live in psql.
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION __SCHEMA__.status(p_run_id uuid)
RETURNS TABLE (run_id uuid, flow_name text, status text, nodes_done bigint, nodes_failed bigint,
               failed_node text, error text, created_at timestamptz, finished_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT r.run_id, r.flow_name, r.status,
           (SELECT count(*) FROM __SCHEMA__.nodes n WHERE n.run_id = r.run_id AND n.status = 'completed'),
           (SELECT count(*) FROM __SCHEMA__.nodes n WHERE n.run_id = r.run_id AND n.status = 'failed'),
           r.failed_node, r.error, r.created_at, r.finished_at
    FROM __SCHEMA__.runs r WHERE r.run_id = p_run_id
$$;

CREATE FUNCTION __SCHEMA__.result(p_run_id uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT result FROM __SCHEMA__.runs WHERE run_id = p_run_id
$$;

-- Buffered: the signal waits in the table until the run's wait_for_signal consumes it.
CREATE FUNCTION __SCHEMA__.signal(p_run_id uuid, p_name text, p_payload jsonb DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM __SCHEMA__.runs WHERE run_id = p_run_id) THEN
        RAISE EXCEPTION 'dbt_durable: no run %', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO __SCHEMA__.signals (run_id, name, payload) VALUES (p_run_id, p_name, p_payload)
    RETURNING signal_id INTO v_id;
    PERFORM pg_notify('dbt_durable_signal', p_run_id::text);
    RETURN v_id;
END
$$;

-- Cancel stops the run at the next node boundary; the runner interrupts running statements.
CREATE FUNCTION __SCHEMA__.cancel(p_run_id uuid, p_reason text DEFAULT 'cancelled')
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status FROM __SCHEMA__.runs WHERE run_id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dbt_durable: no run %', p_run_id USING ERRCODE = 'no_data_found';
    END IF;
    IF v_status IN ('completed', 'failed', 'cancelled') THEN
        RETURN v_status;
    END IF;
    IF v_status = 'pending' OR v_status = 'waiting' AND NOT EXISTS (
        SELECT 1 FROM __SCHEMA__.runs WHERE run_id = p_run_id AND lease_expires_at > now()
    ) THEN
        UPDATE __SCHEMA__.runs
           SET status = 'cancelled', cancel_requested = p_reason, error = 'cancelled: ' || p_reason,
               finished_at = now(), updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
         WHERE run_id = p_run_id;
        INSERT INTO __SCHEMA__.events (run_id, kind, detail)
        VALUES (p_run_id, 'run_cancelled', jsonb_build_object('reason', p_reason));
        RETURN 'cancelled';
    END IF;
    UPDATE __SCHEMA__.runs SET cancel_requested = p_reason, updated_at = now() WHERE run_id = p_run_id;
    PERFORM pg_notify('dbt_durable_cancel', p_run_id::text);
    RETURN 'cancelling';
END
$$;

CREATE VIEW __SCHEMA__.progress AS
SELECT r.run_id, r.flow_name, r.run_key, r.status, r.submitted_by,
       count(n.*) FILTER (WHERE n.status = 'completed') AS nodes_completed,
       count(n.*) FILTER (WHERE n.status IN ('running', 'waiting')) AS nodes_active,
       count(n.*) FILTER (WHERE n.status = 'failed') AS nodes_failed,
       (SELECT count(*) FROM jsonb_array_elements(r.graph -> 'nodes') AS g(node)
         WHERE g.node ->> 'kind' IN ('sql', 'http', 'sleep', 'wait_for_schedule', 'wait_for_signal')
       ) AS graph_nodes,
       r.failed_node, r.error, r.created_at, r.updated_at, r.finished_at
FROM __SCHEMA__.runs r LEFT JOIN __SCHEMA__.nodes n USING (run_id)
GROUP BY r.run_id;

-- Grants what a role needs to start, watch, signal and cancel runs. Nothing goes to PUBLIC.
CREATE FUNCTION __SCHEMA__.grant_usage(p_role name) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %s TO %I', '__SCHEMA__', p_role);
END
$$;




-- ---------------------------------------------------------------------------------------
-- Runner internals. A checkpoint is fenced by the run's lease: FOR SHARE on the run row
-- conflicts with a takeover's UPDATE, so a checkpoint either commits before a takeover
-- reads the run, or sees the new owner and aborts its whole transaction (step included).
-- ---------------------------------------------------------------------------------------

CREATE FUNCTION __SCHEMA__.fence(p_run_id uuid, p_owner text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_owner text;
    v_cancel text;
BEGIN
    SELECT lease_owner, cancel_requested INTO v_owner, v_cancel
      FROM __SCHEMA__.runs WHERE run_id = p_run_id FOR SHARE;
    IF v_owner IS DISTINCT FROM p_owner THEN
        RAISE EXCEPTION 'dbt_durable: lease on run % was lost to %', p_run_id, coalesce(v_owner, 'nobody')
              USING ERRCODE = 'DU001';
    END IF;
    IF v_cancel IS NOT NULL THEN
        RAISE EXCEPTION 'dbt_durable: run % was cancelled: %', p_run_id, v_cancel USING ERRCODE = 'DU002';
    END IF;
END
$$;

-- Records a completed node execution (and its event) if this runner still holds the lease.
CREATE FUNCTION __SCHEMA__.checkpoint_node(
    p_run_id uuid, p_owner text, p_exec_key text, p_node_id text, p_kind text,
    p_attempts integer, p_result jsonb, p_started_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM __SCHEMA__.fence(p_run_id, p_owner);
    INSERT INTO __SCHEMA__.nodes AS n
           (run_id, exec_key, node_id, kind, status, attempts, result, started_at, finished_at)
    VALUES (p_run_id, p_exec_key, p_node_id, p_kind, 'completed', p_attempts, p_result,
            p_started_at, clock_timestamp())
    ON CONFLICT (run_id, exec_key) DO UPDATE
       SET status = 'completed', attempts = EXCLUDED.attempts, result = EXCLUDED.result,
           error = NULL, wake_at = NULL, finished_at = EXCLUDED.finished_at;
    -- No per-node event: the nodes row (with its timings and attempts) is that record, and
    -- one write fewer per node keeps checkpoints close to the cost of a bare commit.
END
$$;

-- Records a node that is parked (sleeping or waiting) or failed; fenced like a checkpoint.
CREATE FUNCTION __SCHEMA__.mark_node(
    p_run_id uuid, p_owner text, p_exec_key text, p_node_id text, p_kind text,
    p_status text, p_attempts integer, p_error text, p_wake_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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

REVOKE ALL ON ALL TABLES IN SCHEMA __SCHEMA__ FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;
