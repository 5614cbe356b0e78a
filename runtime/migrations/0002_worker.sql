-- Version 2: what a parked run waits for, and the workers' claim path.

-- The signal a parked run waits for, so a worker wakes it only for that signal.
ALTER TABLE __SCHEMA__.runs ADD COLUMN waiting_for text;

-- Runs a worker may take: queued, due, signalled, or left behind by a runner whose lease expired.
CREATE INDEX runs_waiting_for ON __SCHEMA__.runs (run_id) WHERE status = 'waiting';

-- New work wakes listening workers at once (they also poll, so no wake-up is ever lost).
CREATE FUNCTION __SCHEMA__.notify_runnable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dbt_durable_wake', NEW.run_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_notify_runnable AFTER INSERT ON __SCHEMA__.runs
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION __SCHEMA__.notify_runnable();

-- Schedules fire each slot once: the run of a slot is keyed by the slot.
ALTER TABLE __SCHEMA__.schedules ADD COLUMN overlap text NOT NULL DEFAULT 'skip'
    CHECK (overlap IN ('skip', 'allow'));
ALTER TABLE __SCHEMA__.schedules ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;

-- Runs of a dbt selection, model by model (`dbt-durable build`), live beside flow runs.
ALTER TABLE __SCHEMA__.runs ADD COLUMN kind text NOT NULL DEFAULT 'flow' CHECK (kind IN ('flow', 'dbt_build'));
ALTER TABLE __SCHEMA__.runs ADD COLUMN dbt_args jsonb;
