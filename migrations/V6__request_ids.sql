-- Idempotent mutations (AIP-155): the first answer to each request_id a
-- caller sent with a mutation, so a repeat within the retention period
-- (--request-id-retention) gets that answer and changes nothing.
-- `request_digest` is a keyed digest (under the secrets key) of the method
-- and the request without its request_id, so a reused id with a different
-- body is refused, and no secret value can be recovered from this table.
-- `response` is the encoded protobuf of the first answer (for the
-- streaming RPCs, their first event: the admission verdict). Replicas
-- serialise on an id with pg_advisory_xact_lock, and a background task
-- deletes rows older than the retention period.
CREATE TABLE request_ids (
    request_id     uuid PRIMARY KEY,
    method         text        NOT NULL,
    request_digest bytea       NOT NULL,
    response       bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX request_ids_created_at ON request_ids (created_at);
