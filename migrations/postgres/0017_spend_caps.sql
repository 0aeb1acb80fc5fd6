-- Daily spend caps (`[providers.NAME] daily_usd`, `[tenants.NAME] daily_usd`): what each
-- provider and each tenant spent on a UTC day (`day`: days since the Unix epoch, on the
-- caps' clock), settled, and what its running attempts have reserved. `scope` is 'provider'
-- or 'tenant'; only capped ones are counted. `noticed` is how far the fleet has been told of
-- the cap `noticed_cap`: 1 once 80% of it was spent, 2 once all of it was, so each notice is
-- given once, by one worker (a cap changed since is told afresh).
CREATE TABLE spend (
    day      BIGINT           NOT NULL,
    scope    TEXT             NOT NULL,
    name     TEXT             NOT NULL,
    spent    DOUBLE PRECISION NOT NULL DEFAULT 0,
    reserved DOUBLE PRECISION NOT NULL DEFAULT 0,
    noticed  INTEGER          NOT NULL DEFAULT 0,
    noticed_cap DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (day, scope, name)
);

-- One open reservation per claimed attempt of a capped provider or tenant: its estimate,
-- until the attempt's end settles it with the real cost. A row claimed again replaces it;
-- one whose row is no longer running (recovered, cancelled, put back) is let go by the
-- upkeep.
CREATE TABLE spend_open (
    execution_id BIGINT           PRIMARY KEY,
    day          BIGINT           NOT NULL,
    provider     TEXT             NOT NULL,
    tenant       TEXT             NOT NULL,
    usd          DOUBLE PRECISION NOT NULL
);

-- The claim of migration 0015, with the tenants a spend cap holds back left out
-- (`p_excluded`, a JSON array of tenant names, or NULL).
DROP FUNCTION lanes_claim(text, text, text, bigint, bigint, bigint, bigint, jsonb);
CREATE FUNCTION lanes_claim(p_channel text, p_provider text, p_owner text,
                            p_max bigint, p_limit bigint, p_lease bigint,
                            p_tenant_limit bigint, p_weights jsonb,
                            p_excluded jsonb)
RETURNS SETOF executions
LANGUAGE plpgsql AS $$
DECLARE
    v_running bigint;
    v_take bigint;
    v_now bigint;
    v_limit bigint := p_limit;
    v_state provider_state%ROWTYPE;
    v_t text[];
    v_n bigint[];
    v_w float8[];
    v_m bigint[];
    v_room bigint[];
    v_ids bigint[];
    v_more bigint[];
    v_level float8;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_channel || ':' || p_provider, 0));
    v_now := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    SELECT * INTO v_state FROM provider_state WHERE provider = p_provider;
    IF FOUND THEN
        IF v_state.paused_until > v_now THEN
            RETURN;
        END IF;
        IF v_state.circuit = 'open' THEN
            v_limit := LEAST(v_limit, 1);
        END IF;
        IF v_state.adaptive_limit IS NOT NULL THEN
            v_limit := LEAST(v_limit, v_state.adaptive_limit);
        END IF;
    END IF;
    SELECT COUNT(*) INTO v_running FROM executions
     WHERE provider = p_provider AND status = 'running';
    -- The start is recorded after the count (migration 0010).
    v_now := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    v_take := LEAST(p_max, v_limit - v_running);
    IF v_take <= 0 THEN
        RETURN;
    END IF;
    -- The tenants with pending work and room under the tenant limit, with their running
    -- rows and weights.
    WITH RECURSIVE tenants(t) AS (
        (SELECT tenant FROM executions
          WHERE provider = p_provider AND status = 'pending' ORDER BY tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT tenant FROM executions
                 WHERE provider = p_provider AND status = 'pending' AND tenant > tenants.t
                 ORDER BY tenant LIMIT 1)
          FROM tenants WHERE tenants.t IS NOT NULL),
    running AS (
        SELECT tenant, COUNT(*) AS n FROM executions
         WHERE provider = p_provider AND status = 'running' GROUP BY tenant)
    SELECT array_agg(tenants.t ORDER BY tenants.t),
           array_agg(COALESCE(running.n, 0) ORDER BY tenants.t),
           array_agg(COALESCE((p_weights ->> tenants.t)::float8, 1.0) ORDER BY tenants.t)
      INTO v_t, v_n, v_w
      FROM tenants LEFT JOIN running ON running.tenant = tenants.t
     WHERE tenants.t IS NOT NULL
       AND (p_tenant_limit IS NULL OR COALESCE(running.n, 0) < p_tenant_limit)
       AND (p_excluded IS NULL OR NOT p_excluded ? tenants.t);
    IF v_t IS NULL THEN
        RETURN;
    END IF;
    IF array_length(v_t, 1) = 1 THEN
        -- One tenant: its rows in order, as many as the tenant limit leaves.
        IF p_tenant_limit IS NOT NULL THEN
            v_take := LEAST(v_take, p_tenant_limit - v_n[1]);
        END IF;
        RETURN QUERY
        UPDATE executions
           SET status = 'running', owner = p_owner, worker = p_owner, started_at = v_now,
               attempts = attempts + 1, resume = false, lease_until = v_now + p_lease
         WHERE id = ANY(ARRAY(SELECT id FROM executions
                               WHERE provider = p_provider AND status = 'pending'
                                 AND tenant = v_t[1] AND not_before <= v_now
                               ORDER BY resume DESC, priority DESC, id
                               LIMIT v_take
                               FOR UPDATE SKIP LOCKED))
        RETURNING executions.*;
        RETURN;
    END IF;
    -- The water level the claim would bring every tenant to, weighed, if all had rows: each
    -- tenant's first candidates are the rows that would take it there, and one more.
    SELECT (SUM(n) + v_take) / SUM(w) INTO v_level FROM unnest(v_n, v_w) AS x(n, w);
    SELECT array_agg(LEAST(v_take, COALESCE(p_tenant_limit - n, v_take)) ORDER BY i),
           array_agg(LEAST(v_take, COALESCE(p_tenant_limit - n, v_take),
                           GREATEST(1, ceil(v_level * w - n)::bigint + 1)) ORDER BY i)
      INTO v_room, v_m
      FROM unnest(v_n, v_w) WITH ORDINALITY AS x(n, w, i);
    LOOP
        WITH s AS (
            SELECT * FROM unnest(v_t, v_n, v_w, v_m) WITH ORDINALITY AS s(t, n, w, m, i)),
        c AS (
            SELECT s.i, s.n, s.w, s.m, x.id, x.resume, x.priority, x.k
              FROM s CROSS JOIN LATERAL (
                SELECT y.id, y.resume, y.priority,
                       row_number() OVER (ORDER BY y.resume DESC, y.priority DESC, y.id) AS k
                  FROM (SELECT e.id, e.resume, e.priority FROM executions e
                         WHERE e.provider = p_provider AND e.status = 'pending'
                           AND e.tenant = s.t AND e.not_before <= v_now
                         ORDER BY e.resume DESC, e.priority DESC, e.id
                         LIMIT s.m
                         FOR UPDATE SKIP LOCKED) y) x),
        sel AS (
            SELECT c.i, c.id, c.k, c.m FROM c
             ORDER BY c.resume DESC, c.priority DESC, (c.n + c.k - 1)::float8 / c.w, c.id
             LIMIT v_take)
        SELECT ARRAY(SELECT sel.id FROM sel),
               ARRAY(SELECT sel.i FROM sel WHERE sel.k = sel.m AND sel.m < v_room[sel.i])
          INTO v_ids, v_more;
        EXIT WHEN cardinality(v_more) = 0;
        FOR i IN 1 .. cardinality(v_more) LOOP
            v_m[v_more[i]] := LEAST(v_room[v_more[i]], v_m[v_more[i]] * 2);
        END LOOP;
    END LOOP;
    RETURN QUERY
    UPDATE executions
       SET status = 'running', owner = p_owner, worker = p_owner, started_at = v_now,
           attempts = attempts + 1, resume = false, lease_until = v_now + p_lease
     WHERE id = ANY(v_ids)
    RETURNING executions.*;
END
$$;
ALTER FUNCTION lanes_claim(text, text, text, bigint, bigint, bigint, bigint, jsonb, jsonb)
    SET enable_seqscan = off;
