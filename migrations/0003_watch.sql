-- Who paused a service: a person (paused_by), or Backstop freezing it after
-- a rollback that did not help (frozen_by_run).
ALTER TABLE service_pauses ADD COLUMN paused_by TEXT;
ALTER TABLE service_pauses ADD COLUMN frozen_by_run TEXT;

-- What happened to a run besides its steps: an alert that joined its watch,
-- a person's ack, a note from an agent.
CREATE TABLE run_notes (
    run_id TEXT NOT NULL,
    at     BIGINT NOT NULL,
    kind   TEXT NOT NULL,
    text   TEXT NOT NULL,
    data   TEXT
);
CREATE INDEX run_notes_by_run ON run_notes (run_id, at);
