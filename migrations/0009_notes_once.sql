-- A PagerDuty event (ack, resolve, reassign) is noted on its run once,
-- however many deliveries race for it (PagerDuty's retries, several
-- instances): the unique index decides, not a read before the write.
DELETE FROM run_notes WHERE kind LIKE 'pagerduty:%' AND EXISTS (
    SELECT 1 FROM run_notes o
    WHERE o.run_id = run_notes.run_id AND o.kind = run_notes.kind AND o.at < run_notes.at
);
CREATE UNIQUE INDEX run_notes_once ON run_notes (run_id, kind) WHERE kind LIKE 'pagerduty:%';
