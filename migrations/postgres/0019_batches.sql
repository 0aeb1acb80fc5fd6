-- Batch lanes: work that can wait goes through a provider's batch API (see SQLite's 0016).
-- `executions` gains the status `batched` (held for a provider batch: waiting to be sent
-- when `batch_id` is NULL, inside batch `batch_id` otherwise; outside the lane's limit, the
-- leases and start-up recovery, since the batch owns it), and `may_defer`, `deadline` and
-- `batch_id`.
-- NOT VALID, then VALIDATE: the check of the rows already there takes a lock that lets
-- reads and writes go on.
ALTER TABLE executions DROP CONSTRAINT executions_status_check;
ALTER TABLE executions ADD CONSTRAINT executions_status_check
    CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'batched'))
    NOT VALID;
ALTER TABLE executions VALIDATE CONSTRAINT executions_status_check;
-- The submission said the work can wait for a provider batch (`deferrable: true`).
ALTER TABLE executions ADD COLUMN may_defer BOOLEAN NOT NULL DEFAULT false;
-- When it must have ended (Unix ms), if the submission said.
ALTER TABLE executions ADD COLUMN deadline BIGINT;
-- The batch that holds it (`batches.id`) while it is `batched`, and the one that ran it.
ALTER TABLE executions ADD COLUMN batch_id BIGINT;

-- The rows waiting to go into a batch, per provider, oldest first (the batcher's read).
CREATE INDEX executions_held ON executions (provider, id)
    WHERE status = 'batched' AND batch_id IS NULL;
-- Their deadlines, for the loop's look at which must run live now.
CREATE INDEX executions_held_deadline ON executions (provider, deadline)
    WHERE status = 'batched' AND batch_id IS NULL AND deadline IS NOT NULL;
-- A batch's rows (sending its requests, writing its results).
CREATE INDEX executions_batch ON executions (batch_id, id) WHERE batch_id IS NOT NULL;

-- A provider batch, recorded before it is sent (see SQLite's 0016 for the states).
CREATE TABLE batches (
    id                BIGSERIAL PRIMARY KEY,
    tag               TEXT    NOT NULL UNIQUE,
    provider          TEXT    NOT NULL,
    model             TEXT,
    state             TEXT    NOT NULL DEFAULT 'open'
                      CHECK (state IN ('open', 'sending', 'sent', 'collecting', 'done', 'failed')),
    provider_batch_id TEXT,
    provider_status   TEXT,
    items             BIGINT  NOT NULL,
    succeeded         BIGINT  NOT NULL DEFAULT 0,
    failed            BIGINT  NOT NULL DEFAULT 0,
    sends             BIGINT  NOT NULL DEFAULT 0,
    created_at        BIGINT  NOT NULL,
    submitted_at      BIGINT,
    ended_at          BIGINT,
    next_poll_at      BIGINT  NOT NULL,
    cost_usd          DOUBLE PRECISION,
    saved_usd         DOUBLE PRECISION,
    error             TEXT,
    owner             TEXT,
    lease_until       BIGINT
);
CREATE INDEX batches_open ON batches (provider, state) WHERE state NOT IN ('done', 'failed');
