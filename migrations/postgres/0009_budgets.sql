-- Requests and tokens reserved against a provider's `rpm`/`tpm` budget: one row per claimed
-- attempt, its tokens an estimate until the attempt's end settles them. Rows older than the
-- one-minute window are deleted by the next budgeted claim.
CREATE TABLE budget_ledger (
    execution_id BIGINT NOT NULL,
    provider TEXT NOT NULL,
    at BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    settled BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX budget_ledger_window ON budget_ledger (provider, at);
CREATE INDEX budget_ledger_open ON budget_ledger (execution_id) WHERE NOT settled;
