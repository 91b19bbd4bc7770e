-- The service's writers lock a workspace row `FOR NO KEY UPDATE`, not `FOR
-- UPDATE`: the lock an `UPDATE` of the row's non-key columns takes anyway.
-- Writers still exclude each other (and the collector's hold) exactly as
-- before, but a transaction that only adds a row referring to the
-- workspace — a counter of dropped probes, whose foreign-key check takes
-- `FOR KEY SHARE` — no longer waits for whoever holds the row. Only a
-- delete of the row (retention) still blocks such inserts, as it must.
CREATE OR REPLACE FUNCTION wl_lock_unchanged(ids uuid[], versions bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    held integer;
BEGIN
    SELECT count(*) INTO held FROM (
        SELECT 1 FROM workspaces w
        JOIN unnest(ids, versions) AS e (id, version) ON w.id = e.id
        WHERE w.row_version = e.version
        ORDER BY w.id
        FOR NO KEY UPDATE OF w NOWAIT
    ) AS locked;
    IF held <> cardinality(ids) THEN
        RAISE EXCEPTION 'a workspace row moved since admission read it'
            USING ERRCODE = 'WL001';
    END IF;
END $$;
