-- Where each cycle's trace hangs (C16): `cycles.trace_id` holds the W3C
-- trace id fixed at admission (the opening caller's, or the cycle's own);
-- this column holds the caller's span id, so the cycle's root span is its
-- child. Empty when the cycle started a trace of its own.
ALTER TABLE cycles ADD COLUMN parent_span_id text NOT NULL DEFAULT '';
