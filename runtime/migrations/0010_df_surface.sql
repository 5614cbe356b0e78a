-- Version 10: pg_durable's SQL surface (df.start, df.status, ...), with pg_durable's argument
-- shapes, for people who switch from pg_durable. See docs/pg_durable-compatibility.md.
--
-- Every function follows the rules of version 7: SECURITY DEFINER, owned by the state owner,
-- search_path pinned, every name qualified; a run is seen and steered only by a login that
-- is a member of its submitting role (visible_oids / visible_run), and a run started here is
-- submitted by (and executes as) the login that starts it.
--
-- start() queues the flow's text; a worker of the same login parses it when it claims the
-- run (a parse error fails the run, with its line, column and caret). The run has no stored
-- plan yet, so its graph summary is filled in once a runner has parsed it.
--
-- Statuses in pg_durable's words: a waiting run is 'running', a quarantined one 'failed'.

-- pg_durable's status of a run.
CREATE FUNCTION __SCHEMA__.df_status(p_status text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p_status WHEN 'waiting' THEN 'running' WHEN 'quarantined' THEN 'failed' ELSE p_status END
$$;

-- Queues a flow (text in the flow language) as a run of the login; returns its id. A text that
-- begins with a SQL command word (SELECT, INSERT, WITH, ...) is one SQL step, as pg_durable's
-- df.start('SELECT 1') auto-wraps a plain string.
CREATE FUNCTION __SCHEMA__.start(p_flow text, p_label text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
    v_text text := p_flow;
    v_login oid := __SCHEMA__.session_oid();
BEGIN
    IF coalesce(btrim(p_flow), '') = '' THEN
        RAISE EXCEPTION 'dbt_durable: start() needs a flow' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_login IS NULL THEN
        RAISE EXCEPTION 'dbt_durable: the login % is not a role', session_user USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_flow ~* '^\s*(select|insert|update|delete|merge|with|values|table|create|drop|alter|truncate|vacuum|analyze|analyse|refresh|reindex|cluster|call|do|grant|revoke|comment|lock|notify|copy|explain|set|reset|discard|security|import)\M' THEN
        v_text := pg_catalog.quote_literal(p_flow);
        IF v_text LIKE 'E''%' THEN  -- a backslash: the flow language has no E'' strings
            v_text := '$dbt_durable_sql$' || p_flow || '$dbt_durable_sql$';
        END IF;
    END IF;
    INSERT INTO __SCHEMA__.runs AS r
           (flow_name, run_key, flow_text, graph, graph_hash, plan, vars, kind, dbt_args, status,
            submitted_by, submitted_by_oid)
    VALUES (coalesce(p_label, ''), NULL, v_text, '{"root": "0", "nodes": []}', '', NULL, '{}', 'flow', NULL,
            'pending', session_user, v_login)
    RETURNING r.run_id INTO v_id;
    INSERT INTO __SCHEMA__.events (run_id, kind, detail)
    VALUES (v_id, 'run_created', jsonb_build_object('label', p_label, 'via', 'start()'));
    PERFORM pg_notify('dbt_durable_wake', v_id::text);
    RETURN v_id::text;
END
$$;

-- A signal with a text payload: valid JSON is kept as JSON, other text becomes a JSON string
-- (pg_durable's rule). A literal payload chooses this form: SELECT signal(id, 'go', 'approve').
CREATE FUNCTION __SCHEMA__.signal(p_run_id uuid, p_name text, p_payload text)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_payload jsonb;
BEGIN
    BEGIN
        v_payload := p_payload::jsonb;
    EXCEPTION WHEN invalid_text_representation THEN
        v_payload := to_jsonb(p_payload);
    END;
    RETURN __SCHEMA__.signal(p_run_id, p_name, v_payload);
END
$$;

-- pg_durable's df.status(): the status of a visible run as text; NULL for an unknown id.
CREATE FUNCTION __SCHEMA__.instance_status(p_run_id uuid) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT __SCHEMA__.df_status(r.status) FROM __SCHEMA__.runs r
     WHERE r.run_id = p_run_id AND r.submitted_by_oid = ANY (__SCHEMA__.visible_oids())
$$;

-- pg_durable's df.result(): the result of a visible run as JSON text.
CREATE FUNCTION __SCHEMA__.instance_result(p_run_id uuid) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.result::text FROM __SCHEMA__.runs r
     WHERE r.run_id = p_run_id AND r.submitted_by_oid = ANY (__SCHEMA__.visible_oids())
$$;

-- The page of visible runs after p_after (a next_cursor), newest first: the rows of both
-- list_instances forms. The cursor is the hex of 'created_at|run_id' of a page's last row.
CREATE FUNCTION __SCHEMA__.list_page(p_status text, p_limit integer, p_label text, p_after text)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint,
               output text, created_at timestamptz, completed_at timestamptz, next_cursor text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_at timestamptz;
    v_id uuid;
    v_cursor text;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 1000 THEN
        RAISE EXCEPTION 'dbt_durable: limit_count must be between 1 and 1000, got %', p_limit
              USING ERRCODE = 'invalid_parameter_value', HINT = 'page with after_cursor / next_cursor';
    END IF;
    IF p_after IS NOT NULL THEN
        BEGIN
            v_cursor := convert_from(decode(p_after, 'hex'), 'UTF8');
            v_at := split_part(v_cursor, '|', 1)::timestamptz;
            v_id := split_part(v_cursor, '|', 2)::uuid;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'dbt_durable: malformed after_cursor %', p_after USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'pass a next_cursor value back verbatim';
        END;
    END IF;
    RETURN QUERY
    WITH page AS (
        SELECT r.run_id, r.flow_name, r.kind, r.status, r.result, r.created_at, r.finished_at
          FROM __SCHEMA__.runs r
         WHERE r.submitted_by_oid = ANY (__SCHEMA__.visible_oids())
           AND (p_status IS NULL OR __SCHEMA__.df_status(r.status) = p_status)
           AND (p_label IS NULL OR r.flow_name = p_label)
           AND (p_after IS NULL OR r.created_at < v_at OR (r.created_at = v_at AND r.run_id > v_id))
         ORDER BY r.created_at DESC, r.run_id ASC
         LIMIT p_limit + 1
    ), numbered AS (
        SELECT p.*, row_number() OVER (ORDER BY p.created_at DESC, p.run_id ASC) AS n FROM page p
    ), last_row AS (
        SELECT encode(convert_to(l.created_at::text || '|' || l.run_id::text, 'UTF8'), 'hex') AS cursor
          FROM numbered l WHERE l.n = p_limit AND EXISTS (SELECT 1 FROM numbered m WHERE m.n = p_limit + 1)
    )
    SELECT x.run_id::text, nullif(x.flow_name, ''), x.kind, __SCHEMA__.df_status(x.status),
           (SELECT count(*) FROM __SCHEMA__.nodes n WHERE n.run_id = x.run_id), x.result::text,
           x.created_at, CASE WHEN x.status = 'completed' THEN x.finished_at END,
           (SELECT c.cursor FROM last_row c)
      FROM numbered x WHERE x.n <= p_limit
     ORDER BY x.created_at DESC, x.run_id ASC;
END
$$;

-- pg_durable's two forms: list_instances([status[, limit]]) and, for pages,
-- list_instances(status, limit, label[, after_cursor]) with timestamps and next_cursor.
CREATE FUNCTION __SCHEMA__.list_instances(status_filter text DEFAULT NULL, limit_count integer DEFAULT 100)
RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint, output text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.instance_id, p.label, p.function_name, p.status, p.execution_count, p.output
      FROM __SCHEMA__.list_page(status_filter, limit_count, NULL, NULL) p
$$;

CREATE FUNCTION __SCHEMA__.list_instances(
    status_filter text, limit_count integer, label_filter text, after_cursor text DEFAULT NULL
) RETURNS TABLE (instance_id text, label text, function_name text, status text, execution_count bigint,
                 output text, created_at timestamptz, completed_at timestamptz, next_cursor text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM __SCHEMA__.list_page(status_filter, limit_count, label_filter, after_cursor)
$$;

-- pg_durable's node type names.
CREATE FUNCTION __SCHEMA__.df_node_type(p_kind text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE p_kind WHEN 'seq' THEN 'THEN' WHEN 'wait_for_signal' THEN 'SIGNAL'
                       WHEN 'wait_for_schedule' THEN 'SCHEDULE' ELSE upper(p_kind) END
$$;

-- One row per node of a visible run (its graph, and any node execution the graph does not
-- list): its latest execution's status and result. inferred_status adds 'skipped' for a node
-- that never ran in a run that has finished.
CREATE FUNCTION __SCHEMA__.instance_nodes(p_run_id uuid)
RETURNS TABLE (node_id text, node_type text, query text, result_name text, left_node text, right_node text,
               status text, result text, status_details text, inferred_status text,
               inferred_status_from_ancestor_id text, updated_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_run __SCHEMA__.runs;
BEGIN
    v_run := __SCHEMA__.visible_run(p_run_id);
    RETURN QUERY
    WITH graph AS (
        SELECT g.node ->> 'id' AS id, g.node ->> 'kind' AS kind, g.node ->> 'label' AS label
          FROM jsonb_array_elements(v_run.graph -> 'nodes') AS g(node)
    ), executed AS (
        SELECT DISTINCT ON (n.node_id) n.node_id, n.kind, n.status, n.result, n.error, n.exec_key, n.attempts,
               n.wake_at, coalesce(n.finished_at, n.started_at) AS at
          FROM __SCHEMA__.nodes n WHERE n.run_id = p_run_id
         ORDER BY n.node_id, n.started_at DESC, n.exec_key DESC
    ), ids AS (
        SELECT id, kind, label FROM graph
        UNION ALL
        SELECT e.node_id, e.kind, NULL FROM executed e WHERE NOT EXISTS (SELECT 1 FROM graph g WHERE g.id = e.node_id)
    )
    SELECT i.id, __SCHEMA__.df_node_type(i.kind),
           CASE WHEN i.kind = 'sql' THEN i.label ELSE jsonb_build_object('kind', i.kind, 'label', i.label)::text END,
           (SELECT ltrim(p.label, '$') FROM graph p
             WHERE p.kind = 'as' AND i.id = p.id || '.0'),
           (SELECT c.id FROM graph c WHERE c.id = i.id || '.0'),
           (SELECT c.id FROM graph c WHERE c.id = i.id || '.1'),
           CASE WHEN e.status IS NULL THEN 'pending' WHEN e.status = 'waiting' THEN 'running'
                WHEN e.status = 'cancelled' THEN 'failed' ELSE e.status END,
           CASE WHEN e.status IN ('completed', 'failed') THEN coalesce(e.result::text, to_jsonb(e.error)::text) END,
           CASE WHEN e.status IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
                'execution_id', e.exec_key, 'attempts', e.attempts, 'error', e.error, 'wake_at', e.wake_at))::text END,
           CASE WHEN e.status IS NULL AND v_run.status IN ('completed', 'failed', 'cancelled') THEN 'skipped'
                WHEN e.status IS NULL THEN 'pending' WHEN e.status = 'waiting' THEN 'running'
                WHEN e.status = 'cancelled' THEN 'failed' ELSE e.status END,
           NULL::text,
           coalesce(e.at, v_run.updated_at)
      FROM ids i LEFT JOIN executed e ON e.node_id = i.id
     ORDER BY string_to_array(i.id, '.')::text[];
END
$$;

-- pg_durable's df.explain() of a run: its graph as an indented tree, with each node's
-- status. (For flow text, use `dbt-durable explain EXPR`: parsing happens in Python.)
CREATE FUNCTION __SCHEMA__.explain(p_input text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id uuid;
    v_run __SCHEMA__.runs;
    v_out text;
BEGIN
    BEGIN
        v_id := btrim(p_input)::uuid;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'dbt_durable: explain() takes a run id; explain flow text with: dbt-durable explain ''<flow>'''
              USING ERRCODE = 'invalid_parameter_value';
    END;
    v_run := __SCHEMA__.visible_run(v_id);
    SELECT format(E'run %s (%s): %s\n', v_run.run_id, coalesce(nullif(v_run.flow_name, ''), 'no label'),
                  __SCHEMA__.df_status(v_run.status))
           || coalesce(string_agg(
                  repeat('  ', array_length(string_to_array(n.node_id, '.'), 1) - 1)
                  || n.node_type || CASE WHEN n.node_type = 'SQL' THEN ' ' || n.query ELSE '' END
                  || CASE WHEN n.result_name IS NOT NULL THEN ' |=> ' || n.result_name ELSE '' END
                  || '  [' || n.inferred_status || ']',
                  E'\n' ORDER BY string_to_array(n.node_id, '.')::int[]), '(not parsed yet)')
      INTO v_out
      FROM __SCHEMA__.instance_nodes(v_id) n
     WHERE n.node_id ~ '^[0-9.]+$';
    RETURN v_out;
END
$$;

-- pg_durable's df.metrics(), over the runs the login may see (pg_durable counts every user's).
CREATE FUNCTION __SCHEMA__.metrics()
RETURNS TABLE (total_instances bigint, running_instances bigint, completed_instances bigint,
               failed_instances bigint, total_executions bigint, total_events bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH mine AS (
        SELECT r.run_id, __SCHEMA__.df_status(r.status) AS status FROM __SCHEMA__.runs r
         WHERE r.submitted_by_oid = ANY (__SCHEMA__.visible_oids())
    )
    SELECT count(*), count(*) FILTER (WHERE status IN ('running', 'pending')),
           count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
           (SELECT count(*) FROM __SCHEMA__.nodes n WHERE n.run_id IN (SELECT run_id FROM mine)),
           (SELECT count(*) FROM __SCHEMA__.events e WHERE e.run_id IN (SELECT run_id FROM mine))
      FROM mine
$$;

-- ---------------------------------------------------------------------------------------
-- Grants
-- ---------------------------------------------------------------------------------------

-- Version 9's grants, plus the functions above, plus the df alias schema when migrate made one
-- (dbt-durable migrate --df-aliases; it carries the comment 'dbt-durable df aliases of <schema>').
CREATE OR REPLACE FUNCTION __SCHEMA__.grant_usage(p_role name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_fn text;
    v_alias name;
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT SELECT ON %s.runs, %s.nodes, %s.events, %s.signals, %s.schedules, %s.workers, '
                   '%s.progress, %s.schema_version TO %I', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__',
                   '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', '__SCHEMA__', p_role);
    IF pg_catalog.to_regclass(format('%s.loop_summaries', '__SCHEMA__')) IS NOT NULL THEN
        EXECUTE format('GRANT SELECT ON %s.loop_summaries TO %I', '__SCHEMA__', p_role);
    END IF;
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
        'restart_run(uuid, text[])', 'loop_counts(uuid)',
        -- version 10
        'df_status(text)', 'start(text, text)', 'signal(uuid, text, text)', 'instance_status(uuid)',
        'instance_result(uuid)', 'list_page(text, integer, text, text)', 'list_instances(text, integer)',
        'list_instances(text, integer, text, text)', 'df_node_type(text)', 'instance_nodes(uuid)',
        'explain(text)', 'metrics()', 'adopt_plan(uuid, jsonb, text, json)'
    ] LOOP
        IF pg_catalog.to_regprocedure(format('%s.%s', '__SCHEMA__', v_fn)) IS NOT NULL THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s.%s TO %I', '__SCHEMA__', v_fn, p_role);
        END IF;
    END LOOP;
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
REVOKE ALL ON ALL TABLES IN SCHEMA __SCHEMA__ FROM PUBLIC;

-- Existing installations: every role already granted usage gets the new functions.
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

-- A runner that parsed the text of a run queued by start() stores its graph, hash and plan, so
-- that explain and instance_nodes show the graph and a resume decodes the plan (see
-- dbt_durable/runner/text_runs.py). Only for the login's own runs, only once.
CREATE FUNCTION __SCHEMA__.adopt_plan(p_run_id uuid, p_graph jsonb, p_graph_hash text, p_plan json)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM __SCHEMA__.own_run(p_run_id);
    UPDATE __SCHEMA__.runs r SET graph = p_graph, graph_hash = p_graph_hash, plan = p_plan, updated_at = now()
     WHERE r.run_id = p_run_id AND r.kind = 'flow' AND r.plan IS NULL AND r.graph_hash = '';
    RETURN FOUND;
END
$$;
REVOKE ALL ON FUNCTION __SCHEMA__.adopt_plan(uuid, jsonb, text, json) FROM PUBLIC;
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT g.rolname
          FROM pg_catalog.pg_class c, aclexplode(c.relacl) a, pg_catalog.pg_roles g
         WHERE c.relnamespace = '__SCHEMA__'::regnamespace AND a.grantee <> c.relowner AND g.oid = a.grantee
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s.adopt_plan(uuid, jsonb, text, json) TO %I', '__SCHEMA__', v_role);
    END LOOP;
END
$$;
