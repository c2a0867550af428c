-- The incident a run paged: PagerDuty webhooks find their run by the
-- incident key (our dedup key) or the incident id.
CREATE TABLE pages (
    incident_key TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    incident_id  TEXT,
    paged_at     BIGINT NOT NULL
);
CREATE INDEX pages_by_incident ON pages (incident_id);

-- Deliveries of other providers already handled (PagerDuty X-Webhook-Id).
CREATE TABLE provider_events (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
