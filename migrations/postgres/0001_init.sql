-- The queue on PostgreSQL: the same columns as on SQLite. Timestamps are Unix milliseconds
-- taken from the database clock, so every worker of a fleet agrees on them.
CREATE TABLE executions (
    id           BIGSERIAL PRIMARY KEY,
    provider     TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    priority     INTEGER NOT NULL DEFAULT 0,
    input        TEXT    NOT NULL,
    output       TEXT,
    error        TEXT,
    error_kind   TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    not_before   BIGINT  NOT NULL,
    -- true when a worker stopped while running it: claimed before any other pending row.
    resume       BOOLEAN NOT NULL DEFAULT false,
    created_at   BIGINT  NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT,
    -- The worker running it, while it runs, and until when its lease holds.
    owner        TEXT,
    lease_until  BIGINT,
    -- The worker that ran the last attempt.
    worker       TEXT
);

-- A lane's claim reads exactly this order.
CREATE INDEX executions_claim
    ON executions (provider, status, resume DESC, priority DESC, id);
-- Lease expiry scans only running rows.
CREATE INDEX executions_running_lease
    ON executions (lease_until) WHERE status = 'running';

-- Limits set at run time (`lanes limits set`); they outrank config and component defaults,
-- and every worker of the fleet reads them.
CREATE TABLE provider_limits (
    provider    TEXT    PRIMARY KEY,
    max_running INTEGER NOT NULL CHECK (max_running >= 1),
    updated_at  BIGINT  NOT NULL
);

-- What the workers last loaded from their plugins folders, for `status`, `limits` and `submit`.
CREATE TABLE providers (
    name          TEXT    PRIMARY KEY,
    component     TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    default_limit INTEGER NOT NULL,
    description   TEXT    NOT NULL,
    seen_at       BIGINT  NOT NULL
);
