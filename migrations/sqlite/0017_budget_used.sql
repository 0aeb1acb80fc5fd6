-- Each budgeted provider's requests and tokens in `budget_ledger`, kept by triggers, so that
-- a budgeted claim reads one row instead of summing the ledger: every claim of a lane under
-- a high budget summed its last minute of reservations (50,000 rows in the benchmark), each
-- a lookup of the row for its tokens.
CREATE TABLE budget_used (
    provider TEXT    NOT NULL PRIMARY KEY,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

INSERT INTO budget_used (provider, requests, tokens)
    SELECT provider, COUNT(*), COALESCE(SUM(tokens), 0) FROM budget_ledger GROUP BY provider;

CREATE TRIGGER budget_used_insert AFTER INSERT ON budget_ledger
BEGIN
    INSERT INTO budget_used (provider, requests, tokens) VALUES (NEW.provider, 1, NEW.tokens)
        ON CONFLICT (provider) DO UPDATE SET requests = requests + 1,
                                             tokens = tokens + excluded.tokens;
END;

CREATE TRIGGER budget_used_delete AFTER DELETE ON budget_ledger
BEGIN
    UPDATE budget_used SET requests = requests - 1, tokens = tokens - OLD.tokens
     WHERE provider = OLD.provider;
END;

CREATE TRIGGER budget_used_update AFTER UPDATE OF provider, tokens ON budget_ledger
BEGIN
    UPDATE budget_used SET requests = requests - 1, tokens = tokens - OLD.tokens
     WHERE provider = OLD.provider;
    INSERT INTO budget_used (provider, requests, tokens) VALUES (NEW.provider, 1, NEW.tokens)
        ON CONFLICT (provider) DO UPDATE SET requests = requests + 1,
                                             tokens = tokens + excluded.tokens;
END;
