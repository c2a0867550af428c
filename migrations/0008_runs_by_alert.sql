-- Deleting an alert checks that no run still points at it (the foreign
-- key): without this index that check reads every run.
CREATE INDEX runs_by_alert ON runs (alert_id);
