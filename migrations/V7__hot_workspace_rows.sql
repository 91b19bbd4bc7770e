-- A workspace's row is rewritten by every admission that changes it and by
-- every phase of its cycles, always with a new `updated_at`. The index that
-- finds long-deleted workspaces for retention named `updated_at`, and
-- Postgres can update a row in place (a HOT update: no new index entries)
-- only when no indexed column changes — so every one of those writes added
-- an entry to each of the table's five indexes, and a busy workspace's
-- lookups by id walked a growing trail of dead entries (BENCHMARKS.md,
-- "HOT"). Retention now finds them by a column that is set once, when the
-- workspace is deleted, and stays NULL before: the writes of a live
-- workspace change no indexed column, and stay in place.
ALTER TABLE workspaces ADD COLUMN deleted_at timestamptz
    GENERATED ALWAYS AS (CASE WHEN status = 'DELETED' THEN updated_at END) STORED;
DROP INDEX workspaces_deleted_at;
CREATE INDEX workspaces_deleted_at ON workspaces (deleted_at) WHERE deleted_at IS NOT NULL;

-- Room on each page for a row's next version, so an in-place update rarely
-- has to move the row to another page.
ALTER TABLE workspaces SET (fillfactor = 80);
