-- Tenants share a lane fairly (see `limits::fair_pick`, the rule's Rust twin). A row names
-- the tenant it runs for, or '' for none: rows without a tenant are one tenant of their own.
-- '' rather than NULL keeps the column a plain key, so one index answers both "the next
-- tenant with pending work" and "that tenant's next row".
ALTER TABLE executions ADD COLUMN tenant TEXT NOT NULL DEFAULT '';

-- Each tenant's pending rows in claim order: the claim walks the tenants (a skip scan of
-- this index) and takes each one's next row from it.
CREATE INDEX executions_tenant_pending
    ON executions (provider, tenant, resume DESC, priority DESC, id) WHERE status = 'pending';

-- The running rows per tenant (the claim counts them; `tenant_limit` caps them).
DROP INDEX executions_running;
CREATE INDEX executions_running ON executions (provider, tenant) WHERE status = 'running';
