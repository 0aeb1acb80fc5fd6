-- Batch lanes: work that can wait goes through a provider's batch API.
--
-- `executions` gains the status `batched` (held for a provider batch: waiting to be sent
-- when `batch_id` is NULL, inside batch `batch_id` otherwise; outside the lane's limit, the
-- leases and start-up recovery, since the batch owns it), and `deferrable`, `deadline` and
-- `batch_id`. SQLite cannot change a CHECK constraint in place, so the table is rebuilt
-- (create, copy, drop, rename), and its indexes and triggers are made again: they are
-- 0003's to 0015's, unchanged, except that `tenant_heads_insert` also gives a tenant its
-- `tenant_heads` row when its first row arrives `batched` (a row that leaves a batch for
-- the live lane finds its tenant there).
CREATE TABLE executions_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    provider     TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled',
                                   'batched')),
    priority     INTEGER NOT NULL DEFAULT 0,
    input        TEXT    NOT NULL,
    output       TEXT,
    error        TEXT,
    error_kind   TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    not_before   INTEGER NOT NULL,
    resume       INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    owner        TEXT,
    lease_until  INTEGER,
    worker       TEXT,
    history      TEXT,
    idempotency_key TEXT,
    request_hash TEXT,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    aged         INTEGER NOT NULL DEFAULT 0,
    route        TEXT,
    tenant       TEXT    NOT NULL DEFAULT '',
    cache_key    TEXT,
    waits_for    INTEGER,
    -- The submission said the work can wait for a provider batch (`deferrable: true`).
    may_defer    INTEGER NOT NULL DEFAULT 0,
    -- When it must have ended (Unix ms), if the submission said.
    deadline     INTEGER,
    -- The batch that holds it (`batches.id`) while it is `batched`, and the one that ran it.
    batch_id     INTEGER
);

INSERT INTO executions_new (id, provider, status, priority, input, output, error, error_kind, attempts, max_attempts, not_before, resume, created_at, started_at, finished_at, owner, lease_until, worker, history, idempotency_key, request_hash, rate_limited, aged, route, tenant, cache_key, waits_for)
    SELECT id, provider, status, priority, input, output, error, error_kind, attempts, max_attempts, not_before, resume, created_at, started_at, finished_at, owner, lease_until, worker, history, idempotency_key, request_hash, rate_limited, aged, route, tenant, cache_key, waits_for FROM executions;

-- Keep the id sequence where it was (ids of deleted rows are never handed out again).
DELETE FROM sqlite_sequence WHERE name = 'executions_new';
UPDATE sqlite_sequence SET name = 'executions_new' WHERE name = 'executions';
DROP TABLE executions;
ALTER TABLE executions_new RENAME TO executions;

CREATE INDEX executions_pending
    ON executions (provider, resume DESC, priority DESC, id) WHERE status = 'pending';

CREATE UNIQUE INDEX executions_idempotency
    ON executions (idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE INDEX executions_tenant_pending
    ON executions (provider, tenant, resume DESC, priority DESC, id) WHERE status = 'pending';

CREATE INDEX executions_running ON executions (provider, tenant) WHERE status = 'running';

CREATE INDEX executions_cache_open ON executions (cache_key)
    WHERE cache_key IS NOT NULL AND waits_for IS NULL AND status IN ('pending', 'running');

CREATE INDEX executions_waiting ON executions (waits_for) WHERE waits_for IS NOT NULL;

CREATE INDEX executions_delayed ON executions (provider, not_before)
    WHERE status = 'pending' AND not_before > created_at;

-- The rows waiting to go into a batch, per provider, oldest first (the batcher's read).
CREATE INDEX executions_held ON executions (provider, id)
    WHERE status = 'batched' AND batch_id IS NULL;
-- Their deadlines, for the loop's look at which must run live now.
CREATE INDEX executions_held_deadline ON executions (provider, deadline)
    WHERE status = 'batched' AND batch_id IS NULL AND deadline IS NOT NULL;
-- A batch's rows (sending its requests, writing its results).
CREATE INDEX executions_batch ON executions (batch_id, id) WHERE batch_id IS NOT NULL;

CREATE TRIGGER tenant_heads_insert AFTER INSERT ON executions
WHEN NEW.tenant <> '' AND NEW.status IN ('pending', 'batched')
BEGIN
    INSERT INTO tenant_heads (provider, tenant) VALUES (NEW.provider, NEW.tenant)
        ON CONFLICT (provider, tenant) DO NOTHING;
    UPDATE tenant_heads SET (resume, priority, head, nb) = (NEW.resume, NEW.priority, NEW.id,
                                                           NEW.not_before)
     WHERE provider = NEW.provider AND tenant = NEW.tenant AND NEW.status = 'pending'
       AND (head IS NULL OR (-NEW.resume, -NEW.priority, NEW.id) < (-resume, -priority, head));
END;

CREATE TRIGGER tenant_heads_insert_running AFTER INSERT ON executions
WHEN NEW.tenant <> '' AND NEW.status = 'running'
BEGIN
    INSERT INTO tenant_heads (provider, tenant) VALUES (NEW.provider, NEW.tenant)
        ON CONFLICT (provider, tenant) DO NOTHING;
    UPDATE tenant_heads SET running = running + 1
     WHERE provider = NEW.provider AND tenant = NEW.tenant;
END;

CREATE TRIGGER tenant_heads_claimed AFTER UPDATE OF status ON executions
WHEN OLD.tenant <> '' AND OLD.provider = NEW.provider AND OLD.tenant = NEW.tenant
 AND OLD.status = 'pending' AND NEW.status = 'running'
BEGIN
    UPDATE tenant_heads SET running = running + 1, (resume, priority, head, nb) = (
        SELECT resume, priority, id, not_before FROM executions
         WHERE provider = NEW.provider AND status = 'pending' AND tenant = NEW.tenant
         ORDER BY resume DESC, priority DESC, id LIMIT 1)
     WHERE provider = NEW.provider AND tenant = NEW.tenant;
END;

CREATE TRIGGER tenant_heads_running AFTER UPDATE OF status ON executions
WHEN OLD.tenant <> '' AND OLD.provider = NEW.provider AND OLD.tenant = NEW.tenant
 AND (OLD.status = 'running') <> (NEW.status = 'running')
 AND NOT (OLD.status = 'pending' AND NEW.status = 'running')
BEGIN
    UPDATE tenant_heads SET running = running + (NEW.status = 'running') - (OLD.status = 'running')
     WHERE provider = NEW.provider AND tenant = NEW.tenant;
END;

CREATE TRIGGER tenant_heads_pending
AFTER UPDATE OF status, priority, resume, not_before ON executions
WHEN OLD.tenant <> '' AND OLD.provider = NEW.provider AND OLD.tenant = NEW.tenant
 AND (OLD.status = 'pending' OR NEW.status = 'pending')
 AND NOT (OLD.status = 'pending' AND NEW.status = 'running')
BEGIN
    UPDATE tenant_heads SET (resume, priority, head, nb) = (
        SELECT resume, priority, id, not_before FROM executions
         WHERE provider = NEW.provider AND status = 'pending' AND tenant = NEW.tenant
         ORDER BY resume DESC, priority DESC, id LIMIT 1)
     WHERE provider = NEW.provider AND tenant = NEW.tenant;
END;

CREATE TRIGGER tenant_heads_moved AFTER UPDATE OF provider, tenant ON executions
WHEN (OLD.tenant <> '' OR NEW.tenant <> '')
 AND (OLD.provider <> NEW.provider OR OLD.tenant <> NEW.tenant)
BEGIN
    INSERT INTO tenant_heads (provider, tenant) SELECT NEW.provider, NEW.tenant
     WHERE NEW.tenant <> '' ON CONFLICT (provider, tenant) DO NOTHING;
    UPDATE tenant_heads SET
        running = (SELECT COUNT(*) FROM executions
                    WHERE provider = tenant_heads.provider AND status = 'running'
                      AND tenant = tenant_heads.tenant),
        (resume, priority, head, nb) = (
            SELECT resume, priority, id, not_before FROM executions
             WHERE provider = tenant_heads.provider AND status = 'pending'
               AND tenant = tenant_heads.tenant
             ORDER BY resume DESC, priority DESC, id LIMIT 1)
     WHERE tenant <> '' AND ((provider = OLD.provider AND tenant = OLD.tenant)
                            OR (provider = NEW.provider AND tenant = NEW.tenant));
END;

CREATE TRIGGER tenant_heads_delete AFTER DELETE ON executions
WHEN OLD.tenant <> '' AND OLD.status IN ('pending', 'running')
BEGIN
    UPDATE tenant_heads SET
        running = running - (OLD.status = 'running'),
        (resume, priority, head, nb) = (
            SELECT resume, priority, id, not_before FROM executions
             WHERE provider = OLD.provider AND status = 'pending' AND tenant = OLD.tenant
             ORDER BY resume DESC, priority DESC, id LIMIT 1)
     WHERE provider = OLD.provider AND tenant = OLD.tenant;
END;

-- A provider batch, recorded before it is sent. `state` is lanes' own: `open` (its rows are
-- chosen, not sent), `sending`, `sent` (the provider runs it; `provider_status` mirrors
-- the provider's word), `collecting` (its results are being written), `done` or `failed`.
-- `owner` and `lease_until` say which worker drives it: a worker that dies leaves it to
-- another once the lease runs out.
CREATE TABLE batches (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Random, unique: what the provider keeps with the batch (OpenAI's metadata), so that a
    -- worker that died between the send and the record of its id can find it again.
    tag               TEXT    NOT NULL UNIQUE,
    provider          TEXT    NOT NULL,
    model             TEXT,
    state             TEXT    NOT NULL DEFAULT 'open'
                      CHECK (state IN ('open', 'sending', 'sent', 'collecting', 'done', 'failed')),
    provider_batch_id TEXT,
    provider_status   TEXT,
    items             INTEGER NOT NULL,
    succeeded         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    -- How many times its requests were sent (more than 1 only after a lost send).
    sends             INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    submitted_at      INTEGER,
    ended_at          INTEGER,
    next_poll_at      INTEGER NOT NULL,
    cost_usd          REAL,
    saved_usd         REAL,
    error             TEXT,
    owner             TEXT,
    lease_until       INTEGER
);
CREATE INDEX batches_open ON batches (provider, state) WHERE state NOT IN ('done', 'failed');
