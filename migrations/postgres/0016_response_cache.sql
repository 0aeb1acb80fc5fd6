-- The exact-match response cache (`[providers.NAME] response_cache`): answers by the key of
-- their request (the normalized input, the provider, the resolved model and the tenant).
CREATE TABLE response_cache (
    key        TEXT    PRIMARY KEY,
    provider   TEXT    NOT NULL,
    output     TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX response_cache_age ON response_cache (provider, created_at);

-- An execution that may be answered from the cache keeps its key. One submitted while
-- another with the same key is open waits for it (`waits_for`, never due until then): its
-- answer completes it, its failure lets it run its own call.
ALTER TABLE executions ADD COLUMN cache_key TEXT;
ALTER TABLE executions ADD COLUMN waits_for BIGINT;
CREATE INDEX executions_cache_open ON executions (cache_key)
    WHERE cache_key IS NOT NULL AND waits_for IS NULL AND status IN ('pending', 'running');
CREATE INDEX executions_waiting ON executions (waits_for) WHERE waits_for IS NOT NULL;
