-- How much priority aging added to an execution's priority (see `[policy] aging_ms`): the
-- `priority` column is the effective one, so claims keep using their index.
ALTER TABLE executions ADD COLUMN aged INTEGER NOT NULL DEFAULT 0;
