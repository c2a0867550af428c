-- Portable between SQLite and Postgres: TEXT and BIGINT only (booleans are
-- 0/1, times are Unix milliseconds), so one set of queries serves both.

CREATE TABLE deployments (
    id             TEXT PRIMARY KEY,
    service        TEXT NOT NULL,
    url            TEXT,
    release        TEXT,
    created_at     BIGINT,
    promoted_at    BIGINT,
    superseded_at  BIGINT,
    live           BIGINT NOT NULL DEFAULT 0,
    verdict        TEXT NOT NULL DEFAULT 'unproven',
    verdict_reason TEXT,
    alerted_at     BIGINT,
    updated_at     BIGINT NOT NULL
);
-- Exactly one live deployment per service.
CREATE UNIQUE INDEX deployments_one_live ON deployments (service) WHERE live = 1;
CREATE INDEX deployments_by_service ON deployments (service, promoted_at);

CREATE TABLE vercel_events (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    received_at   BIGINT NOT NULL
);

CREATE TABLE alerts (
    id          TEXT PRIMARY KEY,
    dedup_key   TEXT NOT NULL UNIQUE,
    resource    TEXT NOT NULL,
    action      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    body        TEXT NOT NULL
);

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    alert_id      TEXT NOT NULL REFERENCES alerts (id),
    service       TEXT,
    status        TEXT NOT NULL,
    outcome       TEXT,
    reason        TEXT,
    decision      TEXT,
    rollback_from TEXT,
    rollback_to   TEXT,
    created_at    BIGINT NOT NULL,
    decided_at    BIGINT,
    finished_at   BIGINT,
    claimed_by    TEXT,
    lease_until   BIGINT,
    not_before    BIGINT NOT NULL
);
CREATE INDEX runs_claimable ON runs (status, not_before);
CREATE INDEX runs_by_service ON runs (service, outcome, decided_at);

CREATE TABLE steps (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    name        TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    status      TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    output      TEXT,
    error       TEXT,
    started_at  BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, name)
);

CREATE TABLE attempts (
    run_id      TEXT NOT NULL,
    step        TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    outcome     TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, step, attempt)
);

CREATE TABLE service_claims (
    service     TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    lease_until BIGINT NOT NULL
);

CREATE TABLE service_pauses (
    service   TEXT PRIMARY KEY,
    reason    TEXT,
    paused_at BIGINT NOT NULL
);
