-- Every attempt's start, end, worker, outcome, error class, error and retry delay, as a JSON
-- array of objects, oldest first, the last 20 kept (see `store::HISTORY_KEPT`). Appended in
-- the same statement that records the attempt's end, so it costs no extra round trip.
ALTER TABLE executions ADD COLUMN history TEXT;
