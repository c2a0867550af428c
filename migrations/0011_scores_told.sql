-- When a score's reply reached the decision's thread: a score stored but
-- not yet told (Slack down, or the instance died between the two) is told
-- by a later sweep, once. Scores from before this were told when scored.
ALTER TABLE scores ADD COLUMN told_at BIGINT;
-- Who is telling it: the instance that stored the score, or a sweep that
-- took it over; a claim older than a minute (its instance died) lapses.
ALTER TABLE scores ADD COLUMN tell_claimed_at BIGINT;
UPDATE scores SET told_at = scored_at;
