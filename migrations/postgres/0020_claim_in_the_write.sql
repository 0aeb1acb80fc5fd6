-- The claim a batch write makes for the slots it frees (`finish_and_claim`): `lanes_claim`,
-- the one claim of PostgreSQL, when the provider's claim lock is free now; otherwise one row
-- of NULLs, and the lane's producer claims once the write has committed. A write never
-- waits for a claim lock: a write that waited held its rows, and the claims of the other
-- workers queued behind its commit (3 workers ran a fifth slower than 1 when the claim in
-- the write took the lock as a plain claim does). The lock taken here is taken again, at
-- once, by `lanes_claim` (advisory locks are re-entrant), and held until the write commits.
CREATE FUNCTION lanes_try_claim(p_channel text, p_provider text, p_owner text,
                                p_max bigint, p_limit bigint, p_lease bigint,
                                p_tenant_limit bigint, p_weights jsonb,
                                p_excluded jsonb)
RETURNS SETOF executions
LANGUAGE plpgsql AS $$
DECLARE
    v_busy executions;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(p_channel || ':' || p_provider, 0)) THEN
        RETURN NEXT v_busy;
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM lanes_claim(p_channel, p_provider, p_owner, p_max, p_limit,
                                           p_lease, p_tenant_limit, p_weights, p_excluded);
END
$$;
