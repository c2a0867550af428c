-- What became of each dry run and rollback within its service's
-- score_window: confirmed, false alarm or undetermined (the verdict as
-- JSON). Written once per run; `backstop report` reads it.
CREATE TABLE scores (
    run_id     TEXT PRIMARY KEY,
    service    TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    verdict    TEXT NOT NULL,
    score      TEXT NOT NULL,
    decided_at BIGINT NOT NULL,
    scored_at  BIGINT NOT NULL
);
CREATE INDEX scores_by_service ON scores (service, decided_at);
