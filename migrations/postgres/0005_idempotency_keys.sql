-- An API client's idempotency key, and a fingerprint of the request it came with: the same
-- key again returns the original execution, the same key with another request is refused.
ALTER TABLE executions ADD COLUMN idempotency_key TEXT;
ALTER TABLE executions ADD COLUMN request_hash TEXT;
CREATE UNIQUE INDEX executions_idempotency
    ON executions (idempotency_key) WHERE idempotency_key IS NOT NULL;
