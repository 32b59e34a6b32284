//! The checker catches what it claims to: a short run without faults whose stores and history are
//! then damaged in known ways (`--sabotage`, see `chatlog_chaos::sabotage`) must report exactly
//! those findings. A checker that says "0" to everything would pass the CI run too; this test is
//! what makes the CI run's zeros mean something. About 15 seconds. The hand-made histories below
//! (no stack) test the judgements themselves: the oracle's, the order rule and the mutations'.

use chatlog_chaos::{Options, Size};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sabotaged_stores_are_reported_exactly() {
    let bin = chatlog_chaos::options::debug_consumer_bin().expect("the consumer binary");
    let opts = Options {
        consumer_bin: bin,
        messages: 2000,
        sessions: 20,
        rate: 1000.0,
        kills: 0,
        rebalances: 0,
        kafka_restarts: 0,
        redis_restarts: 0,
        cassandra_pauses: 0,
        consumer_pauses: 0,
        zombies: 0,
        poll_zombies: 0,
        rollbacks: 0,
        failovers: 0,
        two_producers: 0,
        late_sends: 0,
        sabotage: true,
        ..Options::preset(Size::Ci)
    };
    let report = chatlog_chaos::run(opts, false)
        .await
        .unwrap_or_else(|e| panic!("the chaos run could not be carried out: {e:#}"));
    let examples = serde_json::to_string_pretty(&report.findings.examples).unwrap_or_default();
    assert_eq!(
        (
            report.counts.lost,
            report.counts.duplicated,
            report.counts.reordered,
            report.counts.window_mismatches,
            report.counts.overwritten,
            report.counts.false_missing,
            report.counts.unacked,
            report.counts.mutation_mismatches
        ),
        chatlog_chaos::sabotage::EXPECTED,
        "{}\n{examples}",
        report.summary
    );
    assert_eq!(report.counts.acked, 2000);
    // Session 8's damaged window of another epoch is not served, so it is no finding.
    assert_eq!(report.findings.details.windows_other_epoch, 1);
    // The load's own mutations (10 % of the messages) and the planted recall: the mismatch above
    // is the planted one alone.
    assert!(
        report.counts.mutations > 100,
        "{} mutations acknowledged",
        report.counts.mutations
    );
    assert!(!report.ok, "a damaged store must fail the run");
}

/// Hand-made histories for the online oracle's judgement (no stack needed): what counts as a false
/// `missing` and as an overwrite, and what does not.
mod hand_made {
    use std::collections::BTreeMap;

    use chatlog_chaos::check::mutations::Expected;
    use chatlog_chaos::load::{
        Ack, LiveAck, Mutation, MutationAck, MutationKind, MutationOutcome, Plan, StateKey, Via,
        payload_hash,
    };
    use chatlog_chaos::oracle::{Observations, judge_missing, observe};
    use chatlog_schemas::{ChatMessage, MessageState};

    const HORIZON: f64 = 60.0;

    fn plan() -> Plan {
        Plan::new("hand", 20, 2)
    }

    /// Message `j` of session `s` acknowledged at `seq`, allocated at `alloc_at` and acknowledged
    /// at `acked_at` (seconds since the start).
    fn ack(s: usize, j: usize, seq: i64, alloc_at: f64, acked_at: f64) -> Ack {
        Ack {
            session: s,
            index: j,
            seq,
            msg_id: format!("m-{s}-{j}"),
            server_time_us: (alloc_at * 1e6) as i64,
            partition: 0,
            offset: seq,
            attempts: 1,
            first_try_at: alloc_at,
            acked_at,
            duplicate: false,
            via: Via::A,
        }
    }

    fn stored(plan: &Plan, a: &Ack) -> ChatMessage {
        plan.stored(a)
    }

    fn acks(list: &[Ack], plan: &Plan) -> Vec<Vec<Option<Ack>>> {
        let mut out: Vec<Vec<Option<Ack>>> =
            plan.per_session.iter().map(|&n| vec![None; n]).collect();
        for a in list {
            out[a.session][a.index] = Some(a.clone());
        }
        out
    }

    fn live(list: &[Ack]) -> BTreeMap<(usize, i64), LiveAck> {
        list.iter()
            .map(|a| {
                (
                    (a.session, a.seq),
                    LiveAck {
                        index: a.index,
                        msg_id: a.msg_id.clone(),
                        acked_at: a.acked_at,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn missing_is_false_after_the_ack_or_within_the_horizon_only() {
        let plan = plan();
        let history = [
            ack(0, 0, 1, 10.0, 10.1),  // reported missing after its ack
            ack(0, 1, 2, 20.0, 25.0),  // reported missing 3 s after allocation, before its ack
            ack(0, 2, 3, 30.0, 200.0), // reported missing 100 s after allocation, before its ack
            ack(0, 3, 4, 40.0, 40.1),  // never reported
        ];
        let none = BTreeMap::new();
        let mut obs = Observations::default();
        observe(&mut obs, &plan, &none, 0, "latest", 50.0, &[], &[1], &[]);
        observe(&mut obs, &plan, &none, 0, "after", 23.0, &[], &[2], &[]);
        observe(&mut obs, &plan, &none, 0, "after", 130.0, &[], &[3, 9], &[]);
        // A pending report is never false missing.
        observe(&mut obs, &plan, &none, 0, "after", 12.0, &[], &[], &[4]);
        let judged = judge_missing(
            &obs,
            &plan,
            &acks(&history, &plan),
            |us| us as f64 / 1e6,
            HORIZON,
        );
        let keys: Vec<(usize, i64)> = judged.keys().copied().collect();
        // seq 3: allocated > horizon before the read and acknowledged after it (the producer broke
        // the horizon); seq 9: no acknowledged message there (a real gap).
        assert_eq!(keys, vec![(0, 1), (0, 2)], "{judged:#?}");
        assert!(judged[&(0, 1)].contains("after its ack"));
        assert!(judged[&(0, 2)].contains("after its allocation"));
    }

    #[test]
    fn another_message_at_an_acknowledged_seq_is_an_overwrite_and_foreign_content_a_mismatch() {
        let plan = plan();
        let a = ack(1, 0, 5, 1.0, 2.0);
        let b = ack(1, 1, 5, 3.0, 4.0); // the same seq handed out again
        let live_a = live(std::slice::from_ref(&a));
        // A read of session 1 by `op` at `at` that returned `message`, as the oracle sees it.
        let read = |obs: &mut Observations, op: &'static str, at: f64, message: ChatMessage| {
            observe(obs, &plan, &live_a, 1, op, at, &[message], &[], &[]);
        };
        // Before a's ack, b at seq 5 is no overwrite (nothing acknowledged there yet).
        let mut obs = Observations::default();
        read(&mut obs, "latest", 1.5, stored(&plan, &b));
        assert!(obs.overwritten.is_empty());
        // After it, it is.
        read(&mut obs, "latest", 4.5, stored(&plan, &b));
        assert_eq!(
            obs.overwritten.keys().copied().collect::<Vec<_>>(),
            vec![(1, 0)]
        );
        // a itself is fine.
        let mut clean = Observations::default();
        read(&mut clean, "get", 9.0, stored(&plan, &a));
        assert!(clean.overwritten.is_empty() && clean.content_mismatches.is_empty());
        // a's msg_id with b's content: a mismatch.
        let mut forged = stored(&plan, &b);
        forged.msg_id = a.msg_id.clone();
        read(&mut clean, "get", 9.0, forged);
        assert_eq!(clean.content_mismatches.len(), 1, "{clean:#?}");
        // Changed content under the right client_msg_id: a mismatch too.
        let mut changed = stored(&plan, &a);
        changed.content = b"something else".to_vec();
        let mut third = Observations::default();
        read(&mut third, "get", 9.0, changed);
        assert_eq!(third.content_mismatches.len(), 1);
    }

    #[test]
    fn real_time_order_holds_for_concurrent_and_late_sends_and_catches_inversions() {
        let plan = plan();
        // Two producers at once: b2 (seq 3) acknowledged before b1 (seq 2); both started after
        // seq 1 was acknowledged. A late send (seq 4, allocated at 5.0) acknowledged at 20.0 after
        // seq 5 (allocated 6.0): fine. Seq 6 started after seq 5's ack: fine.
        let mut list = vec![
            ack(0, 0, 1, 1.0, 1.1),
            ack(0, 1, 2, 2.0, 2.3),
            ack(0, 2, 3, 2.0, 2.2),
            ack(0, 3, 4, 5.0, 20.0),
            ack(0, 4, 5, 6.0, 6.1),
            ack(0, 5, 6, 7.0, 7.1),
        ];
        list[3].offset = 50; // produced late: offset after seq 5's
        let all = acks(&list, &plan);
        assert!(chatlog_chaos::check::order_violations(&all[0]).is_empty());
        // A send that started after seq 6's ack got a lower seq: an inversion.
        let mut bad = list.clone();
        bad.push(ack(0, 6, 4, 8.0, 8.1));
        bad[6].offset = 60;
        let all = acks(&bad, &plan);
        let v = chatlog_chaos::check::order_violations(&all[0]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0.index, 6);
    }

    /// A recall of message `j` of session `s` by `by`, acknowledged with `version` (the final
    /// bit set), `uncertain` failed attempts before it.
    fn mutation(
        plan: &Plan,
        a: &Ack,
        kind: MutationKind,
        outcome: Option<StateKey>,
        uncertain: u32,
        k: usize,
    ) -> Mutation {
        let sender = plan.message(a.session, a.index).sender_id;
        Mutation {
            session: a.session,
            index: a.index,
            seq: a.seq,
            kind,
            by: sender,
            content_hash: (kind == MutationKind::Edit)
                .then(|| payload_hash(&plan.edit_content(a.session, a.index, k))),
            first_try_at: a.acked_at + 1.0,
            ended_at: a.acked_at + 2.0,
            attempts: 1 + uncertain,
            uncertain_attempts: uncertain,
            outcome: match outcome {
                Some(key) => MutationOutcome::Acked(MutationAck {
                    key,
                    unchanged: false,
                    partition: a.partition,
                    offset: a.offset + 10,
                }),
                None => MutationOutcome::GaveUp("kafka".into()),
            },
        }
    }

    /// The message of `a` in `state`, as the producer builds it.
    fn in_state(plan: &Plan, a: &Ack, state: MessageState, content: Vec<u8>) -> ChatMessage {
        let mut m = stored(plan, a);
        if state.is_final() {
            m.content.clear();
            m.ext.clear();
        } else {
            m.content = content;
        }
        m.state = state;
        m
    }

    #[test]
    fn a_row_reverted_after_an_acknowledged_recall_is_a_mutation_mismatch() {
        let plan = plan();
        // Message 0 of session 0 carries an ext (every 10th does): a recall must remove it too.
        let a = ack(0, 0, 1, 1.0, 1.1);
        let original = stored(&plan, &a);
        assert!(!original.ext.is_empty());
        let by = original.sender_id.clone();
        let edited = in_state(
            &plan,
            &a,
            MessageState::Edited {
                at_us: a.server_time_us + 10,
                count: 1,
                by: by.clone(),
            },
            plan.edit_content(0, 0, 0),
        );
        let recalled = in_state(
            &plan,
            &a,
            MessageState::Recalled {
                at_us: a.server_time_us + 20,
                by: by.clone(),
            },
            Vec::new(),
        );
        let history = [
            mutation(
                &plan,
                &a,
                MutationKind::Edit,
                Some(StateKey::of(&edited)),
                0,
                0,
            ),
            mutation(
                &plan,
                &a,
                MutationKind::Recall,
                Some(StateKey::of(&recalled)),
                0,
                1,
            ),
        ];
        let refs: Vec<&Mutation> = history.iter().collect();
        let expected = Expected::new(&original, &refs);
        let judge = |m: &ChatMessage| expected.judge(&StateKey::of(m), &m.ext);
        // The recall has the highest version: only the recalled message is right.
        assert_eq!(judge(&recalled), None);
        // Reverted to the message as sent (a replay of the original winning), or to the edit
        // the recall replaced: mismatches.
        assert!(judge(&original).is_some(), "a reverted row must be counted");
        assert!(judge(&edited).is_some(), "an undone recall must be counted");
        // Recalled, but its content still there (flagged, not removed).
        let mut flagged = recalled.clone();
        flagged.content = original.content.clone();
        assert!(judge(&flagged).is_some(), "a recalled row keeps no content");
        let mut with_ext = recalled.clone();
        with_ext.ext = original.ext.clone();
        assert!(judge(&with_ext).is_some(), "a recalled row keeps no ext");
        // Recalled at another time than the acknowledged recall: another version.
        let other = in_state(
            &plan,
            &a,
            MessageState::Recalled {
                at_us: a.server_time_us + 30,
                by: by.clone(),
            },
            Vec::new(),
        );
        assert!(judge(&other).is_some());
        // Without mutations, the message as sent is expected.
        let untouched = Expected::new(&original, &[]);
        assert_eq!(
            untouched.judge(&StateKey::of(&original), &original.ext),
            None
        );
        assert!(
            untouched
                .judge(&StateKey::of(&edited), &edited.ext)
                .is_some()
        );
    }

    #[test]
    fn an_uncertain_mutation_may_have_landed_above_the_acknowledged_ones_only() {
        let plan = plan();
        let a = ack(1, 3, 4, 1.0, 1.1);
        let original = stored(&plan, &a);
        let by = original.sender_id.clone();
        let edit = |k: usize, at: i64, count: u32| {
            in_state(
                &plan,
                &a,
                MessageState::Edited {
                    at_us: a.server_time_us + at,
                    count,
                    by: by.clone(),
                },
                plan.edit_content(1, 3, k),
            )
        };
        // Edit 0 acknowledged at +10; edit 1 failed with Kafka errors (it may be in the topic).
        let history = [
            mutation(
                &plan,
                &a,
                MutationKind::Edit,
                Some(StateKey::of(&edit(0, 10, 1))),
                0,
                0,
            ),
            mutation(&plan, &a, MutationKind::Edit, None, 2, 1),
        ];
        let refs: Vec<&Mutation> = history.iter().collect();
        let expected = Expected::new(&original, &refs);
        let judge = |m: &ChatMessage| expected.judge(&StateKey::of(m), &m.ext);
        assert_eq!(judge(&edit(0, 10, 1)), None, "the acknowledged edit");
        assert_eq!(
            judge(&edit(1, 20, 2)),
            None,
            "the uncertain edit, landed above it"
        );
        assert!(
            judge(&edit(1, 5, 1)).is_some(),
            "below the acknowledged edit, the uncertain one cannot win"
        );
        assert!(
            judge(&edit(2, 20, 2)).is_some(),
            "a content no attempt asked for"
        );
        assert!(judge(&original).is_some(), "the acknowledged edit undone");
        // A recall nobody asked for.
        let recalled = in_state(
            &plan,
            &a,
            MessageState::Recalled {
                at_us: a.server_time_us + 30,
                by: by.clone(),
            },
            Vec::new(),
        );
        assert!(judge(&recalled).is_some());
    }

    #[test]
    fn online_reads_accept_every_state_of_the_message_and_no_other_content() {
        let plan = plan();
        let a = ack(1, 2, 3, 1.0, 1.1);
        let live_a = live(std::slice::from_ref(&a));
        let by = plan.message(1, 2).sender_id;
        let read = |m: ChatMessage| {
            let mut obs = Observations::default();
            observe(&mut obs, &plan, &live_a, 1, "get", 9.0, &[m], &[], &[]);
            obs.content_mismatches.len()
        };
        let edited = |content: Vec<u8>| {
            in_state(
                &plan,
                &a,
                MessageState::Edited {
                    at_us: a.server_time_us + 5,
                    count: 1,
                    by: by.clone(),
                },
                content,
            )
        };
        let recalled = in_state(
            &plan,
            &a,
            MessageState::Recalled {
                at_us: a.server_time_us + 9,
                by: by.clone(),
            },
            Vec::new(),
        );
        assert_eq!(read(edited(plan.edit_content(1, 2, 1))), 0);
        assert_eq!(read(recalled.clone()), 0);
        // Another message's edit, or its own content under a recalled state: mismatches.
        assert_eq!(read(edited(plan.edit_content(1, 3, 1))), 1);
        let mut flagged = recalled;
        flagged.content = stored(&plan, &a).content;
        assert_eq!(read(flagged), 1);
    }
}
