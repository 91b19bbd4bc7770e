-- Workspaces, their config, their cycles and their agents.
--
-- The workspace row is the unit of serialisation: every admission, claim and
-- release locks it (SELECT ... FOR UPDATE) and rewrites the ledger columns
-- (desired .. window_until) in one transaction, so every replica sees the
-- same gate, follow-up and debounce window.

CREATE TABLE workspaces (
    id                    uuid PRIMARY KEY,
    seq                   bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name                  text NOT NULL,
    backend               text NOT NULL,
    spec                  jsonb NOT NULL,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    status                text NOT NULL,
    status_reason         text NOT NULL DEFAULT '',
    -- Bumped by every mutation of secrets, files or spec.
    config_version        bigint NOT NULL DEFAULT 1,
    -- The config version read by the newest provisioning cycle.
    served_config_version bigint NOT NULL DEFAULT 0,

    -- The ledger (services/engine/ledger.rs).
    desired               text NOT NULL DEFAULT 'running',
    generation            bigint NOT NULL DEFAULT 0,
    running_cycle         uuid,
    running_owner         uuid,
    running_lease_until   timestamptz,
    running_goal          text,
    running_generation    bigint,
    running_takeovers     integer,
    pending_cycle         uuid,
    pending_created_at    timestamptz,
    pending_urgent        boolean,
    pending_burst_first   timestamptz,
    pending_burst_last    timestamptz,
    window_until          timestamptz,
    -- Derived from the pending columns and the window on every write, so the
    -- scheduler finds due follow-ups by index.
    pending_due_at        timestamptz,

    CONSTRAINT running_complete CHECK (
        (running_cycle IS NULL) = (running_owner IS NULL)
        AND (running_cycle IS NULL) = (running_lease_until IS NULL)
    ),
    CONSTRAINT pending_complete CHECK (
        (pending_cycle IS NULL) = (pending_created_at IS NULL)
    )
);

-- Names are unique among workspaces that are not deleted.
CREATE UNIQUE INDEX workspaces_live_name ON workspaces (name) WHERE desired <> 'deleted';
CREATE INDEX workspaces_due ON workspaces (pending_due_at) WHERE pending_cycle IS NOT NULL;
CREATE INDEX workspaces_leases ON workspaces (running_lease_until) WHERE running_cycle IS NOT NULL;

CREATE TABLE secrets (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    value        bytea NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

CREATE TABLE files (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path         text NOT NULL,
    content      bytea NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, path)
);

CREATE TABLE cycles (
    id             uuid PRIMARY KEY,
    seq            bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    workspace_id   uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    state          text NOT NULL,
    goal           text,
    generation     bigint,
    config_version bigint,
    outcome        text,
    reason         text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL,
    started_at     timestamptz,
    ended_at       timestamptz,
    takeovers      integer NOT NULL DEFAULT 0,
    trace_id       text NOT NULL DEFAULT ''
);
CREATE INDEX cycles_by_workspace ON cycles (workspace_id, seq DESC);

-- Which triggers each cycle absorbed, and how many requests of each.
CREATE TABLE cycle_triggers (
    cycle_id uuid NOT NULL REFERENCES cycles (id) ON DELETE CASCADE,
    trigger  text NOT NULL,
    count    bigint NOT NULL,
    PRIMARY KEY (cycle_id, trigger)
);

-- One row per provisioned generation: its agent's token (hashed) and what
-- the agent reported.
CREATE TABLE generations (
    workspace_id            uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    generation              bigint NOT NULL,
    cycle_id                uuid NOT NULL,
    token_hash              bytea NOT NULL UNIQUE,
    created_at              timestamptz NOT NULL,
    revoked_at              timestamptz,
    registered_at           timestamptz,
    reported_config_version bigint,
    endpoint                text,
    secret_names            text[],
    file_paths              text[],
    last_heartbeat_at       timestamptz,
    PRIMARY KEY (workspace_id, generation)
);

-- What happened to each trigger of each workspace.
CREATE TABLE trigger_stats (
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    trigger      text NOT NULL,
    accepted     bigint NOT NULL DEFAULT 0,
    coalesced    bigint NOT NULL DEFAULT 0,
    deferred     bigint NOT NULL DEFAULT 0,
    dropped      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, trigger)
);
