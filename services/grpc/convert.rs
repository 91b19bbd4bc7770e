//! Conversions between the wire types and the domain.
//! No lifecycle contract (C1–C20): bad input gets a precise status and changes nothing.

use std::str::FromStr;

use tonic::Status;

use super::status::invalid_field;
use crate::{
    domain::Handling,
    domain::{
        BackendKind, CycleId, CycleState, Outcome, Phase, Timestamp, Trigger, WorkspaceId,
        WorkspaceSpec, WorkspaceStatus,
    },
    proto as pb,
    store::{CycleRecord, WorkspaceRecord},
};

/// A timestamp on the wire.
pub(super) fn ts(at: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn opt_ts(at: Option<Timestamp>) -> Option<prost_types::Timestamp> {
    at.map(ts)
}

/// A workspace id from the wire: malformed → `INVALID_ARGUMENT`.
pub(super) fn workspace_id(raw: &str) -> Result<WorkspaceId, Status> {
    if raw.is_empty() {
        return Err(invalid_field("workspace_id", "workspace_id is required"));
    }
    WorkspaceId::from_str(raw).map_err(|_| {
        invalid_field(
            "workspace_id",
            format!("workspace_id {} is not a UUID", super::status::quoted(raw)),
        )
    })
}

/// A page size: 0 means 100; at most 1000.
pub(super) fn page_size(raw: u32) -> Result<usize, Status> {
    match raw {
        0 => Ok(100),
        1..=1000 => Ok(raw as usize),
        _ => Err(invalid_field("page_size", "page_size must be at most 1000")),
    }
}

/// A trigger as RestartWorkspace accepts it.
pub(super) fn restart_trigger(raw: i32) -> Result<Trigger, Status> {
    match pb::Trigger::try_from(raw) {
        Ok(pb::Trigger::Unspecified | pb::Trigger::Manual) => Ok(Trigger::Manual),
        Ok(pb::Trigger::ConfigChanged) => Ok(Trigger::ConfigChanged),
        Ok(pb::Trigger::HealthProbe) => Ok(Trigger::HealthProbe),
        Ok(pb::Trigger::Reconciler) => Ok(Trigger::Reconciler),
        Ok(pb::Trigger::Create) => Err(invalid_field(
            "trigger",
            "trigger CREATE is reserved for CreateWorkspace",
        )),
        Err(_) => Err(invalid_field(
            "trigger",
            format!("unknown trigger value {raw}"),
        )),
    }
}

/// A backend kind from the wire.
pub(super) fn backend_kind(raw: i32) -> Result<BackendKind, Status> {
    match pb::BackendKind::try_from(raw) {
        Ok(pb::BackendKind::Process) => Ok(BackendKind::Process),
        Ok(pb::BackendKind::Docker) => Ok(BackendKind::Docker),
        Ok(pb::BackendKind::Ec2) => Ok(BackendKind::Ec2),
        Ok(pb::BackendKind::Unspecified) => Err(invalid_field(
            "backend",
            "backend is required (PROCESS, DOCKER or EC2)",
        )),
        Err(_) => Err(invalid_field(
            "backend",
            format!("unknown backend value {raw}"),
        )),
    }
}

pub(super) fn trigger(t: Trigger) -> pb::Trigger {
    match t {
        Trigger::Manual => pb::Trigger::Manual,
        Trigger::ConfigChanged => pb::Trigger::ConfigChanged,
        Trigger::HealthProbe => pb::Trigger::HealthProbe,
        Trigger::Reconciler => pb::Trigger::Reconciler,
        Trigger::Create => pb::Trigger::Create,
    }
}

fn backend(kind: BackendKind) -> pb::BackendKind {
    match kind {
        BackendKind::Process => pb::BackendKind::Process,
        BackendKind::Docker => pb::BackendKind::Docker,
        BackendKind::Ec2 => pb::BackendKind::Ec2,
    }
}

pub(super) fn status(status: WorkspaceStatus) -> pb::WorkspaceStatus {
    match status {
        WorkspaceStatus::Provisioning => pb::WorkspaceStatus::Provisioning,
        WorkspaceStatus::Online => pb::WorkspaceStatus::Online,
        WorkspaceStatus::Stopping => pb::WorkspaceStatus::Stopping,
        WorkspaceStatus::Stopped => pb::WorkspaceStatus::Stopped,
        WorkspaceStatus::Failed => pb::WorkspaceStatus::Failed,
        WorkspaceStatus::Deleted => pb::WorkspaceStatus::Deleted,
    }
}

pub(super) fn phase(phase: Phase) -> pb::restart_event::Phase {
    match phase {
        Phase::Stopping => pb::restart_event::Phase::Stopping,
        Phase::Provisioning => pb::restart_event::Phase::Provisioning,
        Phase::WaitingForAgent => pb::restart_event::Phase::WaitingForAgent,
    }
}

pub(super) fn cycle_state(state: CycleState) -> pb::CycleState {
    match state {
        CycleState::Pending => pb::CycleState::Pending,
        CycleState::Running => pb::CycleState::Running,
        CycleState::Ended => pb::CycleState::Ended,
    }
}

pub(super) fn outcome(outcome: Outcome) -> pb::CycleOutcome {
    match outcome {
        Outcome::Succeeded => pb::CycleOutcome::Succeeded,
        Outcome::Failed => pb::CycleOutcome::CycleFailed,
        Outcome::Stopped => pb::CycleOutcome::WorkspaceStopped,
        Outcome::Deleted => pb::CycleOutcome::WorkspaceDeleted,
    }
}

pub(super) fn handling(handling: Handling) -> pb::trigger_handled::Handling {
    match handling {
        Handling::Accepted => pb::trigger_handled::Handling::Accepted,
        Handling::Coalesced => pb::trigger_handled::Handling::Coalesced,
        Handling::Deferred => pb::trigger_handled::Handling::Deferred,
        Handling::Dropped => pb::trigger_handled::Handling::Dropped,
    }
}

/// A spec from the wire (validated by the caller).
pub(super) fn spec_from(spec: Option<pb::WorkspaceSpec>) -> WorkspaceSpec {
    let spec = spec.unwrap_or_default();
    WorkspaceSpec {
        image: spec.image,
        instance_type: spec.instance_type,
        ami: spec.ami,
        command: spec.command,
        env: spec.env.into_iter().collect(),
        cpu_millis: spec.cpu_millis,
        memory_mib: spec.memory_mib,
    }
}

fn spec_to(spec: &WorkspaceSpec) -> pb::WorkspaceSpec {
    pb::WorkspaceSpec {
        image: spec.image.clone(),
        instance_type: spec.instance_type.clone(),
        ami: spec.ami.clone(),
        command: spec.command.clone(),
        env: spec.env.clone().into_iter().collect(),
        cpu_millis: spec.cpu_millis,
        memory_mib: spec.memory_mib,
    }
}

fn id_or_empty(cycle: Option<CycleId>) -> String {
    cycle.map(|c| c.to_string()).unwrap_or_default()
}

/// A workspace on the wire. Secret values are not in the record at all.
pub(super) fn workspace(record: &WorkspaceRecord) -> pb::Workspace {
    pb::Workspace {
        id: record.id.to_string(),
        name: record.name.clone(),
        backend: backend(record.backend) as i32,
        spec: Some(spec_to(&record.spec)),
        status: status(record.status) as i32,
        status_reason: record.status_reason.clone(),
        generation: record.generation.0,
        config_version: record.config_version.0,
        secret_names: record.secret_names.clone(),
        file_paths: record.file_paths.clone(),
        agent: record.agent.as_ref().map(|agent| pb::AgentInfo {
            generation: agent.generation.0,
            config_version: agent.config_version.0,
            endpoint: agent.endpoint.clone(),
            registered_at: Some(ts(agent.registered_at)),
            last_heartbeat_at: opt_ts(agent.last_heartbeat_at),
            secret_names: agent.secret_names.clone(),
            file_paths: agent.file_paths.clone(),
            report_mismatch: agent.report_mismatch.clone(),
        }),
        running_cycle_id: id_or_empty(record.running_cycle),
        pending_cycle_id: id_or_empty(record.pending_cycle),
        pending_not_before: opt_ts(record.pending_due),
        debounce_until: opt_ts(record.window_until),
        trigger_stats: record
            .trigger_stats
            .iter()
            .map(|(t, counts)| pb::TriggerStats {
                trigger: trigger(*t) as i32,
                accepted: counts.accepted,
                coalesced: counts.coalesced,
                deferred: counts.deferred,
                dropped: counts.dropped,
            })
            .collect(),
        created_at: Some(ts(record.created_at)),
        updated_at: Some(ts(record.updated_at)),
    }
}

/// A cycle on the wire.
pub(super) fn cycle(record: &CycleRecord) -> pb::Cycle {
    pb::Cycle {
        id: record.id.to_string(),
        workspace_id: record.workspace.to_string(),
        generation: record.generation.0,
        triggers: record
            .triggers
            .iter()
            .map(|(t, count)| pb::TriggerCount {
                trigger: trigger(*t) as i32,
                count: *count,
            })
            .collect(),
        config_version: record.config_version.0,
        state: cycle_state(record.state) as i32,
        outcome: record
            .outcome
            .map(|o| outcome(o) as i32)
            .unwrap_or_default(),
        reason: record.reason.clone(),
        created_at: Some(ts(record.created_at)),
        started_at: opt_ts(record.started_at),
        ended_at: opt_ts(record.ended_at),
        takeovers: record.takeovers,
        trace_id: record.trace_id.clone(),
    }
}
