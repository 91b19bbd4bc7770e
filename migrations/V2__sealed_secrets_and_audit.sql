-- Secrets are sealed at rest (services/store/sealing.rs): `value` holds the
-- XChaCha20-Poly1305 ciphertext and `nonce` its random nonce. Rows written
-- before this migration hold plain text and no nonce; the server seals them
-- when it starts (Store::migrate), before serving.
ALTER TABLE secrets ADD COLUMN nonce bytea;

-- One row per mutation a caller made: who (the token's name), what (the
-- RPC), which workspace, when, and what changed (names and sizes, never a
-- secret value). Written in the transaction of the mutation itself, so a
-- mutation and its record commit together or not at all. No foreign key:
-- the record outlives the workspace.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor        text NOT NULL,
    action       text NOT NULL,
    workspace_id uuid NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_workspace ON audit_log (workspace_id, id);
