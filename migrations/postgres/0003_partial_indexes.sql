-- The claim reads pending rows in claim order, and counts running rows per provider. Indexes
-- over just those rows stay small however long the history grows, and a row that leaves
-- `pending` or `running` adds no entry to them.
CREATE INDEX executions_pending
    ON executions (provider, resume DESC, priority DESC, id) WHERE status = 'pending';
CREATE INDEX executions_running
    ON executions (provider) WHERE status = 'running';
DROP INDEX executions_claim;
