-- The queue. Timestamps are Unix milliseconds, so both backends store the same numbers.
CREATE TABLE executions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
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
    not_before   INTEGER NOT NULL,
    -- 1 when a process stopped while running it: claimed before any other pending row.
    resume       INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    owner        TEXT
);

-- A lane's claim reads exactly this order.
CREATE INDEX executions_claim
    ON executions (provider, status, resume DESC, priority DESC, id);

-- Limits set at run time (`lanes limits set`); they outrank config and component defaults.
CREATE TABLE provider_limits (
    provider   TEXT    PRIMARY KEY,
    max_running INTEGER NOT NULL CHECK (max_running >= 1),
    updated_at INTEGER NOT NULL
);

-- What the daemon last loaded from its plugins folder, for `status`, `limits` and `submit`.
CREATE TABLE providers (
    name          TEXT    PRIMARY KEY,
    component     TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    default_limit INTEGER NOT NULL,
    description   TEXT    NOT NULL,
    seen_at       INTEGER NOT NULL
);
