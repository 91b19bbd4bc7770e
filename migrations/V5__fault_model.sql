-- Reads that stay flat as history grows, and retention (issue: failure
-- paths). Old ended cycles, superseded generations and long-deleted
-- workspaces are pruned in the background (engine/retention.rs); audit rows
-- stay (append-only, their retention is the operator's).

-- "The cycle that answers for a workspace now": the running one, found
-- without sorting the workspace's history.
CREATE INDEX cycles_running ON cycles (workspace_id) WHERE state = 'RUNNING';

-- Retention finds old ended cycles and deleted workspaces by time.
CREATE INDEX cycles_ended_at ON cycles (ended_at) WHERE state = 'ENDED';
CREATE INDEX workspaces_deleted_at ON workspaces (updated_at) WHERE status = 'DELETED';
CREATE INDEX generations_created_at ON generations (created_at);

-- An agent's report is recorded, not believed: how it disagrees with what
-- its generation was handed (empty: it agrees).
ALTER TABLE generations ADD COLUMN report_mismatch text NOT NULL DEFAULT '';
