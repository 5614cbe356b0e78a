-- Version 6: the checkpoint fence takes a shared transaction-level advisory lock instead of a
-- FOR SHARE row lock on the run. A row lock writes the run's tuple (and WAL) on every node;
-- an advisory lock lives only in the lock manager. The guarantee is unchanged: a takeover
-- takes the same lock exclusively before it changes the lease owner, so an in-flight
-- checkpoint either commits before the takeover reads the run's progress, or reads the new
-- owner and aborts its whole transaction (the step included).
-- The lock's key is (1684174884, hashtext(run_id)), the same as in Queries.lock_run; a hash
-- collision only makes two runs' checkpoint and takeover wait for each other briefly.

CREATE OR REPLACE FUNCTION __SCHEMA__.fence(p_run_id uuid, p_owner text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_owner text;
    v_cancel text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1684174884, hashtext(p_run_id::text));
    -- Read after the lock is granted: a takeover that committed before is seen (READ COMMITTED
    -- takes a new snapshot per statement).
    SELECT lease_owner, cancel_requested INTO v_owner, v_cancel
      FROM __SCHEMA__.runs WHERE run_id = p_run_id;
    IF v_owner IS DISTINCT FROM p_owner THEN
        RAISE EXCEPTION 'dbt_durable: lease on run % was lost to %', p_run_id, coalesce(v_owner, 'nobody')
              USING ERRCODE = 'DU001';
    END IF;
    IF v_cancel IS NOT NULL THEN
        RAISE EXCEPTION 'dbt_durable: run % was cancelled: %', p_run_id, v_cancel USING ERRCODE = 'DU002';
    END IF;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA __SCHEMA__ FROM PUBLIC;
