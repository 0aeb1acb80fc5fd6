-- The columns the PostgreSQL backend needs for leases, kept on SQLite too so that both
-- backends return the same rows. One SQLite file has one worker, so its leases never expire
-- while it lives; start-up recovery handles a worker that died.
ALTER TABLE executions ADD COLUMN lease_until INTEGER;
-- The worker that ran the last attempt.
ALTER TABLE executions ADD COLUMN worker TEXT;
