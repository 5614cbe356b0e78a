-- Version 3: row-level security. A role sees (and so can signal, cancel or resume) only the
-- runs submitted by a role it is a member of: its own, or, for a worker role that was granted
-- the submitting roles, theirs. The schema owner, who migrates, sees everything.

ALTER TABLE __SCHEMA__.runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE __SCHEMA__.nodes ENABLE ROW LEVEL SECURITY;
ALTER TABLE __SCHEMA__.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE __SCHEMA__.signals ENABLE ROW LEVEL SECURITY;

CREATE POLICY runs_by_role ON __SCHEMA__.runs
    USING (pg_has_role(current_user, submitted_by, 'MEMBER'))
    WITH CHECK (pg_has_role(current_user, submitted_by, 'MEMBER'));

-- The other tables follow their run (the sub-select is itself filtered by runs_by_role).
CREATE POLICY nodes_by_run ON __SCHEMA__.nodes
    USING (EXISTS (SELECT 1 FROM __SCHEMA__.runs r WHERE r.run_id = nodes.run_id));
CREATE POLICY events_by_run ON __SCHEMA__.events
    USING (EXISTS (SELECT 1 FROM __SCHEMA__.runs r WHERE r.run_id = events.run_id));
CREATE POLICY signals_by_run ON __SCHEMA__.signals
    USING (EXISTS (SELECT 1 FROM __SCHEMA__.runs r WHERE r.run_id = signals.run_id));

CREATE OR REPLACE FUNCTION __SCHEMA__.grant_usage(p_role name) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %s TO %I', '__SCHEMA__', p_role);
    EXECUTE format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA %s TO %I', '__SCHEMA__', p_role);
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;
