-- The audit log is append-only: no role the service runs as may change or
-- remove what it recorded. A statement-level trigger refuses UPDATE,
-- DELETE and TRUNCATE for every role, the table's owner and superusers
-- included (the service's own statements, a bug, or SQL slipped through
-- it cannot rewrite history). Retention is the operator's: as a superuser,
--   BEGIN;
--   SET LOCAL session_replication_role = replica;  -- ordinary triggers off
--   DELETE FROM audit_log WHERE at < now() - interval '400 days';
--   COMMIT;
-- (README, Security: audit).
CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;

-- Refused calls (auth::refusals) are recorded too; they name no workspace.
ALTER TABLE audit_log ALTER COLUMN workspace_id DROP NOT NULL;

-- Retention deletes by time.
CREATE INDEX audit_log_by_time ON audit_log (at);
