-- Requests and tokens reserved against a provider's `rpm`/`tpm` budget: one row per claimed
-- attempt, its tokens an estimate until the attempt's end settles them. Rows older than the
-- one-minute window are deleted by the next budgeted claim.
CREATE TABLE budget_ledger (
    execution_id INTEGER NOT NULL,
    provider TEXT NOT NULL,
    at INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    settled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX budget_ledger_window ON budget_ledger (provider, at);
CREATE INDEX budget_ledger_open ON budget_ledger (execution_id) WHERE settled = 0;
