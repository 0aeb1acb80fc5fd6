-- A claim in one round trip. Inside a PL/pgSQL function each statement takes a fresh
-- snapshot, so the count below sees every claim that committed before this one took the
-- provider's advisory lock: the fleet-wide limit holds exactly as with separate statements.
CREATE FUNCTION lanes_claim(p_channel text, p_provider text, p_owner text, p_max bigint,
                            p_limit bigint, p_lease bigint)
RETURNS SETOF executions
LANGUAGE plpgsql AS $$
DECLARE
    v_running bigint;
    v_take bigint;
    v_now bigint;
    v_claimed bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_channel || ':' || p_provider, 0));
    SELECT COUNT(*) INTO v_running FROM executions
     WHERE provider = p_provider AND status = 'running';
    v_take := LEAST(p_max, p_limit - v_running);
    IF v_take <= 0 THEN
        RETURN;
    END IF;
    v_now := (extract(epoch from clock_timestamp()) * 1000)::bigint;
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
    IF v_running + v_take < p_limit AND v_claimed = v_take THEN
        PERFORM pg_notify(p_channel, p_provider);
    END IF;
END
$$;
