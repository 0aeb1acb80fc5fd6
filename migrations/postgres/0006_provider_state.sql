-- What the policies decided for a provider, shared by every worker: a pause (rate limit,
-- open circuit) stops claims until `paused_until`; an open circuit whose cool-down is over
-- lets one probe run at a time; an adaptive limit caps the claims.
CREATE TABLE provider_state (
    provider       TEXT    PRIMARY KEY,
    paused_until   BIGINT  NOT NULL DEFAULT 0,
    reason         TEXT,
    circuit        TEXT    NOT NULL DEFAULT 'closed' CHECK (circuit IN ('closed', 'open')),
    openings       INTEGER NOT NULL DEFAULT 0,
    adaptive_limit INTEGER CHECK (adaptive_limit >= 1),
    updated_at     BIGINT  NOT NULL
);

-- Rate-limited answers an execution got; they do not count as attempts.
ALTER TABLE executions ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0;

-- The claim honours the provider's state: nothing while paused, one at a time while an
-- open circuit probes, and at most the adaptive limit.
CREATE OR REPLACE FUNCTION lanes_claim(p_channel text, p_provider text, p_owner text,
                                       p_max bigint, p_limit bigint, p_lease bigint)
RETURNS SETOF executions
LANGUAGE plpgsql AS $$
DECLARE
    v_running bigint;
    v_take bigint;
    v_now bigint;
    v_claimed bigint;
    v_limit bigint := p_limit;
    v_state provider_state%ROWTYPE;
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
    v_take := LEAST(p_max, v_limit - v_running);
    IF v_take <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE executions
       SET status = 'running', owner = p_owner, worker = p_owner, started_at = v_now,
           attempts = attempts + 1, resume = false, lease_until = v_now + p_lease
     WHERE id IN (SELECT id FROM executions
                   WHERE provider = p_provider AND status = 'pending' AND not_before <= v_now
                   ORDER BY resume DESC, priority DESC, id
                   LIMIT v_take
                   FOR UPDATE SKIP LOCKED)
    RETURNING executions.*;
    GET DIAGNOSTICS v_claimed = ROW_COUNT;
    -- This worker ran out of slots before the fleet did, and there may be more due rows:
    -- let the others fill the rest.
    IF v_running + v_take < v_limit AND v_claimed = v_take THEN
        PERFORM pg_notify(p_channel, p_provider);
    END IF;
END
$$;
