-- A version on every workspace row, moved by every UPDATE of the row
-- whoever makes it (this trigger, not each statement, so no writer can
-- forget it). Admission remembers the rows it read and wrote, with their
-- versions; a group whose rows it still knows is admitted without reading
-- them again: its writes go out behind `wl_lock_unchanged`, which locks the
-- rows only if none moved since, and otherwise fails the whole transaction
-- (then the group is admitted again the usual way, from rows read under
-- the lock). A workspace's secrets and files change only with its row
-- (their config version, its deletion), so the version covers them too.
--
-- A version is random, not a counter: versions are only ever compared for
-- equality, and a counter can repeat with other contents once the
-- database's history is rewound (a restored backup, a failover to a
-- standby that lost commits) while replicas still remember rows.
CREATE FUNCTION wl_new_row_version() RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT (random() * 9223372036854775807)::bigint
$$;

ALTER TABLE workspaces ADD COLUMN row_version bigint NOT NULL DEFAULT wl_new_row_version();

CREATE FUNCTION wl_next_row_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.row_version := wl_new_row_version();
    RETURN NEW;
END $$;

-- Only when the statement did not set a new version itself: admission's
-- save of a group's rows does (`wl_new_row_version()` inline), and a
-- `WHEN` is checked without calling the function, so the busiest writer
-- pays nothing for the trigger (~5 µs a row otherwise).
CREATE TRIGGER workspaces_row_version BEFORE UPDATE ON workspaces
    FOR EACH ROW WHEN (NEW.row_version = OLD.row_version)
    EXECUTE FUNCTION wl_next_row_version();
-- Also in sessions with `session_replication_role = replica` (the audit
-- retention procedure in the README, logical replication's apply): no
-- write of the row may leave its version as it was.
ALTER TABLE workspaces ENABLE ALWAYS TRIGGER workspaces_row_version;

-- Locks the rows of `ids` if each still has its version in `versions`
-- (same order); fails with SQLSTATE WL001 if any moved or is gone, and
-- with 55P03 (NOWAIT) if another transaction holds one: a group never
-- waits for a row.
CREATE FUNCTION wl_lock_unchanged(ids uuid[], versions bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    held integer;
BEGIN
    SELECT count(*) INTO held FROM (
        SELECT 1 FROM workspaces w
        JOIN unnest(ids, versions) AS e (id, version) ON w.id = e.id
        WHERE w.row_version = e.version
        ORDER BY w.id
        FOR UPDATE OF w NOWAIT
    ) AS locked;
    IF held <> cardinality(ids) THEN
        RAISE EXCEPTION 'a workspace row moved since admission read it'
            USING ERRCODE = 'WL001';
    END IF;
END $$;
