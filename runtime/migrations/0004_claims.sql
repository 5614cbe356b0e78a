-- Version 4: claims stay cheap with a deep queue, and checkpoints write less.

-- Each kind of claimable run has an index of its own, so a claim never scans finished runs.
CREATE INDEX runs_pending ON __SCHEMA__.runs (created_at) WHERE status = 'pending';
CREATE INDEX runs_waiting_wake ON __SCHEMA__.runs (wake_at) WHERE status = 'waiting';
CREATE INDEX runs_running_lease ON __SCHEMA__.runs (lease_expires_at) WHERE status = 'running';
DROP INDEX IF EXISTS __SCHEMA__.runs_claimable;
DROP INDEX IF EXISTS __SCHEMA__.runs_waiting_for;

-- A checkpoint's fence already locks and proves its run; the foreign key would lock it again
-- on every node. Deleting a run deletes its nodes through this trigger instead.
ALTER TABLE __SCHEMA__.nodes DROP CONSTRAINT IF EXISTS nodes_run_id_fkey;

CREATE FUNCTION __SCHEMA__.delete_run_nodes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM __SCHEMA__.nodes WHERE run_id = OLD.run_id;
    RETURN OLD;
END
$$;

CREATE TRIGGER runs_delete_nodes AFTER DELETE ON __SCHEMA__.runs
    FOR EACH ROW EXECUTE FUNCTION __SCHEMA__.delete_run_nodes();

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;
