-- Who held or resumed a service, and when: a pause's row goes when it is
-- lifted, the log keeps both ends (a person from Slack or the CLI, or
-- Backstop freezing it after a rollback that did not help).
CREATE TABLE pause_log (
    seq     BIGINT NOT NULL,
    service TEXT NOT NULL,
    at      BIGINT NOT NULL,
    action  TEXT NOT NULL,
    actor   TEXT,
    reason  TEXT
);
CREATE INDEX pause_log_by_service ON pause_log (service, seq);
CREATE INDEX pause_log_by_seq ON pause_log (seq);

-- Pruning a run deletes its pages by run id.
CREATE INDEX pages_by_run ON pages (run_id);

-- `deployments list` and the console page the ledger newest first.
CREATE INDEX deployments_by_time ON deployments (service, (COALESCE(promoted_at, created_at, 0)), id);
CREATE INDEX deployments_all_by_time ON deployments ((COALESCE(promoted_at, created_at, 0)), id);
