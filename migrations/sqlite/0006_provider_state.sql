-- What the policies decided for a provider, shared by every process on the queue: a pause
-- (rate limit, open circuit) stops claims until `paused_until`; an open circuit whose
-- cool-down is over lets one probe run at a time; an adaptive limit caps the claims.
CREATE TABLE provider_state (
    provider       TEXT    PRIMARY KEY,
    paused_until   INTEGER NOT NULL DEFAULT 0,
    reason         TEXT,
    circuit        TEXT    NOT NULL DEFAULT 'closed' CHECK (circuit IN ('closed', 'open')),
    openings       INTEGER NOT NULL DEFAULT 0,
    adaptive_limit INTEGER CHECK (adaptive_limit >= 1),
    updated_at     INTEGER NOT NULL
);

-- Rate-limited answers an execution got; they do not count as attempts.
ALTER TABLE executions ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0;
