-- `nb` is now NULL for a head that was due when it was created (the common case: a row
-- submitted to run at once), and `tenant_heads_later` holds only the heads with an `nb`:
-- those that wait for a later time (a retry's backoff, a cache waiter), as
-- `executions_delayed` (migration 0015) does for rows. So a claim that moves a tenant's head
-- from one such row to the next leaves that index alone, where it moved an entry for every
-- claimed row. The claim takes a NULL `nb` as due.
DROP INDEX tenant_heads_later;
CREATE INDEX tenant_heads_later ON tenant_heads (provider, nb) WHERE nb IS NOT NULL;

UPDATE tenant_heads SET nb = NULL
 WHERE nb <= (SELECT created_at FROM executions WHERE id = tenant_heads.head);

-- The triggers that set `nb`, as in migration 0014 but for the rule above.
DROP TRIGGER tenant_heads_insert;
DROP TRIGGER tenant_heads_claimed;
DROP TRIGGER tenant_heads_pending;
DROP TRIGGER tenant_heads_moved;
DROP TRIGGER tenant_heads_delete;

-- A new pending row is its tenant's head when it comes first in claim order (a new row has
-- the highest id, so only a higher class puts it first).
CREATE TRIGGER tenant_heads_insert AFTER INSERT ON executions
WHEN NEW.tenant <> '' AND NEW.status = 'pending'
BEGIN
    INSERT INTO tenant_heads (provider, tenant) VALUES (NEW.provider, NEW.tenant)
        ON CONFLICT (provider, tenant) DO NOTHING;
    UPDATE tenant_heads SET (resume, priority, head, nb) = (
        NEW.resume, NEW.priority, NEW.id,
        CASE WHEN NEW.not_before > NEW.created_at THEN NEW.not_before END)
     WHERE provider = NEW.provider AND tenant = NEW.tenant
       AND (head IS NULL OR (-NEW.resume, -NEW.priority, NEW.id) < (-resume, -priority, head));
END;

-- A claimed row (pending to running): one more running, and the tenant's next head (one
-- index seek into `executions_tenant_pending`). One trigger for both, since a claim is the
-- hot path: each trigger that runs is a sub-program with cursors of its own.
CREATE TRIGGER tenant_heads_claimed AFTER UPDATE OF status ON executions
WHEN OLD.tenant <> '' AND OLD.provider = NEW.provider AND OLD.tenant = NEW.tenant
 AND OLD.status = 'pending' AND NEW.status = 'running'
BEGIN
    UPDATE tenant_heads SET running = running + 1, (resume, priority, head, nb) = (
        SELECT resume, priority, id, CASE WHEN not_before > created_at THEN not_before END
          FROM executions
         WHERE provider = NEW.provider AND status = 'pending' AND tenant = NEW.tenant
         ORDER BY resume DESC, priority DESC, id LIMIT 1)
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
        SELECT resume, priority, id, CASE WHEN not_before > created_at THEN not_before END
          FROM executions
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
            SELECT resume, priority, id, CASE WHEN not_before > created_at THEN not_before END
          FROM executions
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
            SELECT resume, priority, id, CASE WHEN not_before > created_at THEN not_before END
          FROM executions
             WHERE provider = OLD.provider AND status = 'pending' AND tenant = OLD.tenant
             ORDER BY resume DESC, priority DESC, id LIMIT 1)
     WHERE provider = OLD.provider AND tenant = OLD.tenant;
END;
