-- The deltas of streamed attempts, stored in chunks (a JSON array of deltas each, written
-- about every 100 ms), so that any worker's API can serve an execution's stream, and replay
-- it after the end, until `[streams] keep_secs` passes.
CREATE TABLE stream_chunks (
    execution_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    -- The index of its first delta within the attempt's stream, and how many it holds.
    first INTEGER NOT NULL,
    count INTEGER NOT NULL,
    deltas TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (execution_id, attempt, first)
);
CREATE INDEX stream_chunks_at ON stream_chunks (at);
