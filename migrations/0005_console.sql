-- The console pages runs newest first, by service too.
CREATE INDEX runs_by_service_id ON runs (service, id);
