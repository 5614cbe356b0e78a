-- Version 5: each run stores its execution plan (the flow's AST as JSON), so that a runner
-- resuming it in a new process decodes the plan instead of parsing the flow text again.
-- Runs created before this version have no plan; their flow text is compiled as before.
-- json, not jsonb: it is written once and read whole, and json is returned as stored.
ALTER TABLE __SCHEMA__.runs ADD COLUMN plan json;
