-- Every claim of a run increments its fence; every write that belongs to the
-- run carries the fence it was claimed with, so a worker whose claim was
-- taken over changes nothing.
ALTER TABLE runs ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;
