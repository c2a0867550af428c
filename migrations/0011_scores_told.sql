-- When a score's reply reached the decision's thread: a score stored but
-- not yet told (Slack down, or the instance died between the two) is told
-- by a later sweep. Scores from before this were told when scored.
ALTER TABLE scores ADD COLUMN told_at BIGINT;
UPDATE scores SET told_at = scored_at;
