-- A provider's `rpm`/`tpm` budget in the claim a batch write makes for the slots it frees
-- (`finish_and_claim`), so that a budgeted lane is refilled in the write's round trip, as an
-- unbudgeted one is (migration 0020).

-- Each budgeted provider's requests and tokens in `budget_ledger`, kept by triggers, so that
-- a budgeted claim reads one row instead of summing the ledger: every claim of a lane under
-- a high budget summed its last minute of reservations (50,000 rows in the benchmark).
-- Statement triggers, one change per provider and statement, in the providers' order: two
-- settlements of several providers lock their rows in the same order.
CREATE TABLE budget_used (
    provider TEXT   NOT NULL PRIMARY KEY,
    requests BIGINT NOT NULL DEFAULT 0,
    tokens   BIGINT NOT NULL DEFAULT 0
);

-- Workers of the fleet that have not migrated yet may write the ledger meanwhile: the lock,
-- held until the migration commits, keeps their changes out of the snapshot's gap before
-- the triggers exist.
LOCK TABLE budget_ledger IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO budget_used (provider, requests, tokens)
    SELECT provider, COUNT(*), COALESCE(SUM(tokens), 0) FROM budget_ledger GROUP BY provider;

-- Adds `p_delta`'s (provider, requests, tokens) rows to `budget_used`.
CREATE FUNCTION lanes_budget_used_add(p_providers text[], p_requests bigint[], p_tokens bigint[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO budget_used (provider, requests, tokens)
    SELECT d.provider, SUM(d.requests), SUM(d.tokens)
      FROM unnest(p_providers, p_requests, p_tokens) AS d(provider, requests, tokens)
     GROUP BY d.provider
     ORDER BY d.provider
    ON CONFLICT (provider) DO UPDATE
       SET requests = budget_used.requests + EXCLUDED.requests,
           tokens = budget_used.tokens + EXCLUDED.tokens
$$;

CREATE FUNCTION lanes_budget_used_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lanes_budget_used_add(array_agg(provider), array_agg(1::bigint), array_agg(tokens))
       FROM new_rows;
    RETURN NULL;
END
$$;

CREATE FUNCTION lanes_budget_used_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lanes_budget_used_add(array_agg(provider), array_agg(-1::bigint), array_agg(-tokens))
       FROM old_rows;
    RETURN NULL;
END
$$;

CREATE FUNCTION lanes_budget_used_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lanes_budget_used_add(array_agg(d.provider), array_agg(d.requests),
                                  array_agg(d.tokens))
       FROM (SELECT provider, -1::bigint AS requests, -tokens AS tokens FROM old_rows
             UNION ALL
             SELECT provider, 1::bigint, tokens FROM new_rows) d;
    RETURN NULL;
END
$$;

CREATE TRIGGER budget_used_insert AFTER INSERT ON budget_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION lanes_budget_used_inserted();
CREATE TRIGGER budget_used_delete AFTER DELETE ON budget_ledger
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION lanes_budget_used_deleted();
CREATE TRIGGER budget_used_update AFTER UPDATE ON budget_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION lanes_budget_used_updated();

-- The characters of a message's content that count towards its tokens: a string, or its
-- parts' `text` and `arguments` and, within, their own `content`. The twin of
-- `store::add_content`; images are not counted.
CREATE FUNCTION lanes_content_chars(p_content jsonb) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF jsonb_typeof(p_content) = 'string' THEN
        RETURN octet_length(p_content #>> '{}');
    ELSIF jsonb_typeof(p_content) = 'array' THEN
        RETURN (SELECT COALESCE(SUM(
                      CASE WHEN jsonb_typeof(p -> 'text') = 'string'
                           THEN octet_length(p ->> 'text') ELSE 0 END
                    + CASE WHEN jsonb_typeof(p -> 'arguments') = 'string'
                           THEN octet_length(p ->> 'arguments') ELSE 0 END
                    + lanes_content_chars(p -> 'content')), 0)
                  FROM jsonb_array_elements(p_content) p);
    END IF;
    RETURN 0;
END
$$;

-- The tokens an attempt of `p_input` is expected to use, reserved when it is claimed: its
-- `max_tokens` and its text's bytes ÷ 4. The twin of `store::estimate_tokens` (the store
-- test `postgres_budget_estimates_match_their_rust_twin` holds them equal); an input that is not
-- JSON estimates as an empty request, as there.
CREATE FUNCTION lanes_estimate_tokens(p_input text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v jsonb;
    v_max bigint := 0;
    v_chars bigint := 0;
BEGIN
    BEGIN
        v := p_input::jsonb;
    EXCEPTION WHEN others THEN
        -- jsonb cannot hold a `\u0000`: as `\u0001` it counts the same bytes (so does a
        -- `\\u0000`, an escaped backslash and `u0000`, as `\\u0001`).
        BEGIN
            v := replace(p_input, '\u0000', '\u0001')::jsonb;
        EXCEPTION WHEN others THEN
            RETURN 0;
        END;
    END;
    IF jsonb_typeof(v) <> 'object' THEN
        RETURN 0;
    END IF;
    -- An integer that fits (a submission's `max_tokens` is a u32); anything else is none.
    IF jsonb_typeof(v -> 'max_tokens') = 'number' AND (v ->> 'max_tokens') ~ '^-?[0-9]{1,18}$' THEN
        v_max := GREATEST((v ->> 'max_tokens')::bigint, 0);
    END IF;
    IF jsonb_typeof(v -> 'system') = 'string' THEN
        v_chars := v_chars + octet_length(v ->> 'system');
    END IF;
    IF jsonb_typeof(v -> 'prompt') = 'string' THEN
        v_chars := v_chars + octet_length(v ->> 'prompt');
    END IF;
    IF jsonb_typeof(v -> 'messages') = 'array' THEN
        v_chars := v_chars + (SELECT COALESCE(SUM(lanes_content_chars(m -> 'content')), 0)
                                FROM jsonb_array_elements(v -> 'messages') m);
    END IF;
    RETURN v_max + v_chars / 4;
END
$$;

-- `lanes_try_claim` within the provider's budget (`p_rpm`, `p_tpm`, either NULL for none):
-- under the provider's budget lock (the key `lock_budget` takes for a producer's budgeted
-- claim), what the last minute used, the room it leaves for the next pending rows by their
-- estimates taken costliest first (a dry run of the claim, undone), the claim of that many,
-- and a reservation for each row claimed. The rule of `Budget::room` and the Rust-driven
-- budgeted claim (`PgQueue::claim`), in one statement. As `lanes_try_claim`, it never waits
-- for a lock: when the budget lock or the claim lock is held, one row of NULLs, and the
-- lane's producer claims once the write has committed.
CREATE FUNCTION lanes_try_claim_within(p_channel text, p_provider text, p_owner text,
                                       p_max bigint, p_limit bigint, p_lease bigint,
                                       p_tenant_limit bigint, p_weights jsonb,
                                       p_rpm bigint, p_tpm bigint)
RETURNS SETOF executions
LANGUAGE plpgsql AS $$
DECLARE
    v_busy executions;
    v_now bigint;
    v_requests bigint;
    v_tokens bigint;
    v_room bigint := p_max;
    v_estimates bigint[];
BEGIN
    IF p_rpm IS NULL AND p_tpm IS NULL THEN
        RETURN QUERY SELECT * FROM lanes_try_claim(p_channel, p_provider, p_owner, p_max,
                                                   p_limit, p_lease, p_tenant_limit,
                                                   p_weights, NULL);
        RETURN;
    END IF;
    -- The budget lock first, as a producer's claim takes them.
    IF NOT pg_try_advisory_xact_lock(hashtextextended('budget:' || p_channel || ':' || p_provider, 0))
       OR NOT pg_try_advisory_xact_lock(hashtextextended(p_channel || ':' || p_provider, 0)) THEN
        RETURN NEXT v_busy;
        RETURN;
    END IF;
    v_now := (extract(epoch from clock_timestamp()) * 1000)::bigint;
    -- Past the window; not those a settlement holds now (it would wait for them while
    -- holding `budget_used` rows that the settlement's trigger waits for): the next claim
    -- deletes them, and until then they count, on the safe side.
    DELETE FROM budget_ledger WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM budget_ledger WHERE provider = p_provider AND at <= v_now - 60000
           FOR UPDATE SKIP LOCKED));
    SELECT COALESCE(MAX(requests), 0), COALESCE(MAX(tokens), 0) INTO v_requests, v_tokens
      FROM budget_used WHERE provider = p_provider;
    IF p_rpm IS NOT NULL THEN
        v_room := LEAST(v_room, GREATEST(p_rpm - v_requests, 0));
    END IF;
    IF p_tpm IS NOT NULL AND v_room > 0 THEN
        -- The rows the claim would take (up to `p_max`, as the producer's dry run), undone
        -- by the error that ends the block: only the estimates, in variables, outlive it.
        BEGIN
            SELECT COALESCE(array_agg(lanes_estimate_tokens(c.input)), '{}')
              INTO v_estimates
              FROM (SELECT input FROM lanes_claim(p_channel, p_provider, p_owner, p_max,
                                                  p_limit, p_lease, p_tenant_limit,
                                                  p_weights, NULL)) c;
            RAISE EXCEPTION 'lanes: the budget''s dry run is undone' USING ERRCODE = 'LN001';
        EXCEPTION WHEN SQLSTATE 'LN001' THEN
            NULL;
        END;
        SELECT LEAST(v_room, COUNT(*)) INTO v_room
          FROM (SELECT SUM(e) OVER (ORDER BY e DESC, n ROWS UNBOUNDED PRECEDING) AS total
                  FROM unnest(v_estimates) WITH ORDINALITY AS u(e, n)) s
         WHERE s.total <= p_tpm - v_tokens;
    END IF;
    IF v_room <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
      WITH c AS (SELECT * FROM lanes_claim(p_channel, p_provider, p_owner, v_room, p_limit,
                                           p_lease, p_tenant_limit, p_weights, NULL)),
           reserved AS (
             INSERT INTO budget_ledger (execution_id, provider, at, tokens)
             SELECT id, p_provider, v_now, lanes_estimate_tokens(input) FROM c)
      SELECT * FROM c;
END
$$;
