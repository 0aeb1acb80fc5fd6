-- The deltas of streamed attempts, stored in chunks (a JSON array of deltas each, written
-- about every 100 ms), so that any worker's API can serve an execution's stream, and replay
-- it after the end, until `[streams] keep_secs` passes.
CREATE TABLE stream_chunks (
    execution_id BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    -- The index of its first delta within the attempt's stream, and how many it holds.
    first BIGINT NOT NULL,
    count BIGINT NOT NULL,
    deltas TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (execution_id, attempt, first)
);
CREATE INDEX stream_chunks_at ON stream_chunks (at);
