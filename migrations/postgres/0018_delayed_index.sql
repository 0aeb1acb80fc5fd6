-- The pending rows that wait for a later time (a retry's backoff, a cache waiter), by due
-- time, for the producer's `next_due`: without it, that query read every pending row of
-- the provider (seconds at a million pending, with the lane's claims held up behind it). A
-- row submitted to run at once has `not_before = created_at` and is not in it, so a
-- submission or a claim of such a row costs the index nothing.
CREATE INDEX executions_delayed ON executions (provider, not_before)
    WHERE status = 'pending' AND not_before > created_at;
