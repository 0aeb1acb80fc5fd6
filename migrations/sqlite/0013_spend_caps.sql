-- Daily spend caps (`[providers.NAME] daily_usd`, `[tenants.NAME] daily_usd`): what each
-- provider and each tenant spent on a UTC day (`day`: days since the Unix epoch, on the
-- caps' clock), settled, and what its running attempts have reserved. `scope` is 'provider'
-- or 'tenant'; only capped ones are counted. `noticed` is how far the fleet has been told of
-- the cap `noticed_cap`: 1 once 80% of it was spent, 2 once all of it was, so each notice is
-- given once, by one worker (a cap changed since is told afresh).
CREATE TABLE spend (
    day      INTEGER NOT NULL,
    scope    TEXT    NOT NULL,
    name     TEXT    NOT NULL,
    spent    REAL    NOT NULL DEFAULT 0,
    reserved REAL    NOT NULL DEFAULT 0,
    noticed  INTEGER NOT NULL DEFAULT 0,
    noticed_cap REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, scope, name)
);

-- One open reservation per claimed attempt of a capped provider or tenant: its estimate,
-- until the attempt's end settles it with the real cost. A row claimed again replaces it;
-- one whose row is no longer running (recovered, cancelled, put back) is let go by the
-- upkeep.
CREATE TABLE spend_open (
    execution_id INTEGER PRIMARY KEY,
    day          INTEGER NOT NULL,
    provider     TEXT    NOT NULL,
    tenant       TEXT    NOT NULL,
    usd          REAL    NOT NULL
);
