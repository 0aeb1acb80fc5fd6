-- The live workers of the fleet and the providers each serves. Each worker renews its rows
-- (`seen_until`, a lease of its own) and shares every fleet-wide limit evenly with the other
-- live workers that serve the provider, so that work spreads over the fleet instead of
-- staying with whichever worker claimed first. A row whose `seen_until` has passed belongs
-- to a worker that is gone; any worker may delete it.
CREATE TABLE workers (
    owner      TEXT   NOT NULL,
    provider   TEXT   NOT NULL,
    seen_until BIGINT NOT NULL,
    PRIMARY KEY (owner, provider)
);

-- A claim no longer wakes the fleet when it fills this worker's slots while the fleet has
-- room left. With shares that is every claim that refills a worker's share while another
-- worker's freed slots wait for their own refill, and each woke the whole fleet: 3 workers
-- used about a tenth more CPU per execution. Room that its worker will not take is announced
-- where it frees instead (`Queue::slot_freed`: a worker that stops, lost the component, or
-- runs above a lowered limit or share).
CREATE OR REPLACE FUNCTION lanes_claim(p_channel text, p_provider text, p_owner text,
                                       p_max bigint, p_limit bigint, p_lease bigint)
RETURNS SETOF executions
LANGUAGE plpgsql AS $$
DECLARE
    v_running bigint;
    v_take bigint;
    v_now bigint;
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
    -- The start is recorded after the count: a result committed between the first clock
    -- read and the count freed the slot this claim takes, and its finish time may be later
    -- than that first read (the benchmark saw 1025 overlapping rows under a limit of 1024).
    v_now := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    v_take := LEAST(p_max, v_limit - v_running);
    IF v_take <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE executions
       SET status = 'running', owner = p_owner, worker = p_owner, started_at = v_now,
           attempts = attempts + 1, resume = false, lease_until = v_now + p_lease
     WHERE id = ANY(ARRAY(SELECT id FROM executions
                           WHERE provider = p_provider AND status = 'pending'
                             AND not_before <= v_now
                           ORDER BY resume DESC, priority DESC, id
                           LIMIT v_take
                           FOR UPDATE SKIP LOCKED))
    RETURNING executions.*;
END
$$;
