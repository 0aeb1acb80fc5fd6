-- The claim never reads the whole table, however small the table was when its plans were
-- cached. PL/pgSQL keeps a generic plan for each statement after its first runs on a
-- connection. Made while the queue was empty (a new deployment, or a quiet night), that
-- plan read the table sequentially and compared every row with the claimed ids, and it
-- stayed so as the queue filled, until an ANALYZE of the table replaced it: a claim of 500
-- rows took 82 ms on a table of 20,000 rows, against 7.5 ms by key, and the cost grows with
-- the table times the claim. Each of the claim's statements has an index that answers it
-- (`provider_state`'s key, `executions_running`, `executions_pending`, `executions_pkey`),
-- so the function plans without sequential scans.
ALTER FUNCTION lanes_claim(text, text, text, bigint, bigint, bigint) SET enable_seqscan = off;
