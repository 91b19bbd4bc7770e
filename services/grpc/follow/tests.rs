//! Unit tests of `grpc::follow`: the first event of a request's stream.
use super::*;

// Found from outside: a delete's stream opened with `accepted
// {generation: 1}`, the generation it stops, where the proto says 0.
#[test]
fn accepted_names_the_generation_provisioned_and_zero_for_a_stop_or_delete() {
    let now = chrono::Utc::now();
    let accepted = |goal| {
        let admission = Admission::of(Verdict::Accepted {
            cycle: CycleId::new(),
            generation: Generation(4),
            goal,
        });
        match first_event(admission, now).and_then(|e| e.event) {
            Some(Ev::Accepted(accepted)) => accepted.generation,
            other => panic!("not accepted: {other:?}"),
        }
    };
    assert_eq!(accepted(Goal::Provision), 4);
    assert_eq!(accepted(Goal::Stop), 0);
    assert_eq!(accepted(Goal::Delete), 0);
}
