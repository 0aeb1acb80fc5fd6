-- Daily spend caps (`[providers.NAME] daily_usd`, `[tenants.NAME] daily_usd`): what each
-- provider and each tenant spent on a UTC day (`day`: days since the Unix epoch, on the
-- caps' clock), settled, and what its running attempts have reserved. `scope` is 'provider'
-- or 'tenant'. `noticed` is how far the fleet has been told: 1 once 80% of the cap was
-- spent, 2 once all of it was, so each notice is given once, by one worker.
CREATE TABLE spend (
    day      INTEGER NOT NULL,
    scope    TEXT    NOT NULL,
    name     TEXT    NOT NULL,
    spent    REAL    NOT NULL DEFAULT 0,
    reserved REAL    NOT NULL DEFAULT 0,
    noticed  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, scope, name)
);

-- One open reservation per claimed attempt: its estimate, until the attempt's end settles
-- it with the real cost. A row claimed again after its worker died keeps its first one.
CREATE TABLE spend_open (
    execution_id INTEGER PRIMARY KEY,
    day          INTEGER NOT NULL,
    provider     TEXT    NOT NULL,
    tenant       TEXT    NOT NULL,
    usd          REAL    NOT NULL
);
