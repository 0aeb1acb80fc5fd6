-- Each named tenant's place in its provider's claim order, kept by triggers, so the fair
-- claim reads the few tenants it may take from (an index range of this small table) instead
-- of walking every tenant with pending rows (a skip scan of `executions_tenant_pending`,
-- about 3 ms a claim at 1,000 tenants). Rows without a tenant (`''`) are left out: a queue
-- without tenants pays nothing for this, and the claim finds that one tenant's head itself.
--
-- `running` is the tenant's running rows; `resume`, `priority`, `head` and `nb` are the
-- class, id and `not_before` of its first pending row in claim order (due or not), all
-- NULL when it has none. A row is never removed: there are at most as many as (provider,
-- tenant) pairs in `executions`. A later migration that rebuilds `executions` (create, copy,
-- drop, rename) drops these triggers with it, and must create them again.
CREATE TABLE tenant_heads (
    provider TEXT    NOT NULL,
    tenant   TEXT    NOT NULL,
    running  INTEGER NOT NULL DEFAULT 0,
    resume   INTEGER,
    priority INTEGER,
    head     INTEGER,
    nb       INTEGER,
    PRIMARY KEY (provider, tenant)
) WITHOUT ROWID;

-- The claim's order among tenants under round robin: class, fewest running, oldest head.
-- `nb` covers the claim's test of a head's due time without a lookup.
CREATE INDEX tenant_heads_order
    ON tenant_heads (provider, resume DESC, priority DESC, running, head, nb)
    WHERE head IS NOT NULL;

-- The tenants whose head is not due yet: their first due row may come later in the order,
-- so the claim always looks at them.
CREATE INDEX tenant_heads_later ON tenant_heads (provider, nb) WHERE head IS NOT NULL;

INSERT INTO tenant_heads (provider, tenant, running)
    SELECT provider, tenant, SUM(status = 'running') FROM executions
     WHERE tenant <> '' AND status IN ('pending', 'running') GROUP BY provider, tenant;

UPDATE tenant_heads SET (resume, priority, head, nb) = (
    SELECT resume, priority, id, not_before FROM executions
     WHERE provider = tenant_heads.provider AND status = 'pending'
       AND tenant = tenant_heads.tenant
     ORDER BY resume DESC, priority DESC, id LIMIT 1);

-- A new pending row is its tenant's head when it comes first in claim order (a new row has
-- the highest id, so only a higher class puts it first).
CREATE TRIGGER tenant_heads_insert AFTER INSERT ON executions
WHEN NEW.tenant <> '' AND NEW.status = 'pending'
BEGIN
    INSERT INTO tenant_heads (provider, tenant) VALUES (NEW.provider, NEW.tenant)
        ON CONFLICT (provider, tenant) DO NOTHING;
    UPDATE tenant_heads SET (resume, priority, head, nb) = (NEW.resume, NEW.priority, NEW.id,
                                                           NEW.not_before)
     WHERE provider = NEW.provider AND tenant = NEW.tenant
       AND (head IS NULL OR (-NEW.resume, -NEW.priority, NEW.id) < (-resume, -priority, head));
END;

-- A new row that is running already (none is, today: a row is claimed after it is written).
CREATE TRIGGER tenant_heads_insert_running AFTER INSERT ON executions
WHEN NEW.tenant <> '' AND NEW.status = 'running'
BEGIN
    INSERT INTO tenant_heads (provider, tenant) VALUES (NEW.provider, NEW.tenant)
        ON CONFLICT (provider, tenant) DO NOTHING;
    UPDATE tenant_heads SET running = running + 1
     WHERE provider = NEW.provider AND tenant = NEW.tenant;
END;

-- A claimed row (pending to running): one more running, and the tenant's next head (one
-- index seek into `executions_tenant_pending`). One trigger for both, since a claim is the
-- hot path: each trigger that runs is a sub-program with cursors of its own.
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

-- Any other change of running: an end, a retry, a recovery, a cancel.
CREATE TRIGGER tenant_heads_running AFTER UPDATE OF status ON executions
WHEN OLD.tenant <> '' AND OLD.provider = NEW.provider AND OLD.tenant = NEW.tenant
 AND (OLD.status = 'running') <> (NEW.status = 'running')
 AND NOT (OLD.status = 'pending' AND NEW.status = 'running')
BEGIN
    UPDATE tenant_heads SET running = running + (NEW.status = 'running') - (OLD.status = 'running')
     WHERE provider = NEW.provider AND tenant = NEW.tenant;
END;

-- Any other change of a pending row: it leaves (cancelled) or comes back (a retry, a
-- recovery), or its class or due time changes (aging, the cache's waiters): the tenant's
-- head again.
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

-- A row that moves to another provider or tenant (a route's move): both places again.
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

-- A row deleted while pending or running.
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
