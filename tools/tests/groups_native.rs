//! Native consumer groups end to end: real `sluice broker` processes, group members as
//! `sluice consume --group` child processes (so a crash is a real kill -9), `sluice group`
//! commands, and raw native requests through `sluice_net::client::Client::control` for the
//! error cases.
//!
//! Members print `partition offset` per record; a test reads their stdout from threads and
//! checks the union against what it produced. Waits poll a condition with a deadline.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_engine::rt;
use sluice_net::client::{Client, ClientConfig};
use sluice_net::native::messages::{ErrorCode, OffsetCommit, Request, Response, TopicPartitions};
use support::{Broker, assert_error, assert_success, sluice_bin};

/// Short sessions, so a killed member's partitions move within seconds.
const BROKER_FLAGS: &[&str] = &["--group-min-session-timeout-ms", "1000"];

/// Session timeout of the member processes.
const SESSION_MS: &str = "3000";

/// Far beyond what any wait here needs; reaching it means the condition never held.
const DEADLINE: Duration = Duration::from_secs(60);

/// A `sluice consume --group` process; its printed lines are collected by a thread.
struct Member {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn start(broker: &Broker, topic: &str, group: &str) -> Member {
        let mut child = Command::new(sluice_bin())
            .args(["consume", topic, "--group", group, "--format", "%p %o\\n"])
            .args(["--session-timeout-ms", SESSION_MS])
            .args(["--brokers", &broker.brokers()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a group member");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().expect("lines").push(line);
            }
        });
        Member { child, lines }
    }

    fn printed(&self) -> Vec<(i32, i64)> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .map(|l| parse_line(l))
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_line(line: &str) -> (i32, i64) {
    let (p, o) = line
        .split_once(' ')
        .unwrap_or_else(|| panic!("bad line {line:?}"));
    (p.parse().expect("partition"), o.parse().expect("offset"))
}

/// Polls `condition` until it holds; panics with `what` at the deadline.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Polling a condition another process brings about.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create_topic(broker: &Broker, topic: &str, partitions: i32) {
    let partitions = partitions.to_string();
    let args = ["topic", "create", topic, "--partitions", &partitions];
    assert_success(&broker.sluice(&args, b""));
}

/// Produces `count` records to each of `partitions` partitions.
fn produce(broker: &Broker, topic: &str, partitions: i32, count: usize) {
    for partition in 0..partitions {
        let input: String = (0..count).map(|i| format!("v{partition}-{i}\n")).collect();
        let p = partition.to_string();
        let args = ["produce", topic, "--partition", &p, "--acks", "all"];
        assert_success(&broker.sluice(&args, input.as_bytes()));
    }
}

/// A parsed `sluice group describe`.
#[derive(Debug, Default)]
struct Described {
    state: String,
    group_type: String,
    /// (member id, its partitions as "topic-p").
    members: Vec<(String, Vec<String>)>,
    /// (topic, partition, committed, log end, lag) with "-" kept as text.
    rows: Vec<(String, i32, String, String, String)>,
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split('\t')
        .find_map(|f| f.strip_prefix(key).and_then(|f| f.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// `sluice group describe`, parsed; an empty description while the group does not exist.
fn describe(broker: &Broker, group: &str) -> Described {
    let output = broker.sluice(&["group", "describe", group], b"");
    let mut described = Described::default();
    if String::from_utf8_lossy(&output.stderr).contains("no such group") {
        return described;
    }
    let out = assert_success(&output);
    for line in out.lines() {
        if line.starts_with("Group: ") {
            described.state = field(line, "State").to_owned();
            described.group_type = field(line, "Type").to_owned();
        } else if line.starts_with("Member: ") {
            let assignment = field(line, "Assignment");
            let partitions = assignment
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            described
                .members
                .push((field(line, "Member").to_owned(), partitions));
        } else if line.starts_with("Topic: ") {
            described.rows.push((
                field(line, "Topic").to_owned(),
                field(line, "Partition").parse().expect("partition"),
                field(line, "Committed").to_owned(),
                field(line, "LogEnd").to_owned(),
                field(line, "Lag").to_owned(),
            ));
        }
    }
    // No partition ever has two owners.
    let owned: Vec<&String> = described.members.iter().flat_map(|(_, ps)| ps).collect();
    let distinct: BTreeSet<&String> = owned.iter().copied().collect();
    assert_eq!(
        owned.len(),
        distinct.len(),
        "a partition with two owners: {out}"
    );
    described
}

/// True when the group is stable with `members` members owning `per_member` partitions each.
fn split(described: &Described, members: usize, per_member: usize) -> bool {
    described.state == "Stable"
        && described.members.len() == members
        && described
            .members
            .iter()
            .all(|(_, ps)| ps.len() == per_member)
}

fn all_offsets(partitions: i32, count: i64) -> BTreeSet<(i32, i64)> {
    (0..partitions)
        .flat_map(|p| (0..count).map(move |o| (p, o)))
        .collect()
}

fn union(members: &[&Member]) -> BTreeSet<(i32, i64)> {
    members.iter().flat_map(|m| m.printed()).collect()
}

// Goal: three members of one group split a 6-partition topic (two partitions each, no
// partition owned twice), and when one is killed with SIGKILL its partitions move to the
// other two within the session timeout and no record goes unconsumed. Method: three
// `sluice consume --group` processes; describe until the split shows; kill -9 one; produce
// more; describe until two members own three each; the union of what all three printed must
// cover every produced offset (members commit after printing, so a crash only repeats).
#[test]
fn three_members_split_and_take_over_after_kill() {
    let broker = Broker::start_with(BROKER_FLAGS);
    create_topic(&broker, "split", 6);
    produce(&broker, "split", 6, 10);
    let mut members: Vec<Member> = (0..3)
        .map(|_| Member::start(&broker, "split", "g"))
        .collect();
    wait_until("three members with two partitions each", || {
        split(&describe(&broker, "g"), 3, 2)
    });
    assert_eq!(describe(&broker, "g").group_type, "consumer");
    members[0].kill();
    produce(&broker, "split", 6, 10);
    wait_until("two members with three partitions each", || {
        split(&describe(&broker, "g"), 2, 3)
    });
    let expected = all_offsets(6, 20);
    wait_until("every record printed by some member", || {
        union(&members.iter().collect::<Vec<_>>()).is_superset(&expected)
    });
    let printed = union(&members.iter().collect::<Vec<_>>());
    assert!(
        printed.is_subset(&expected),
        "printed records never produced"
    );
}

// Goal: a broker restart loses neither the group's membership nor its offsets: running
// members carry on with the same member ids and consume what is produced after the restart,
// and a member started later resumes from the committed offsets. Method: two members on a
// 2-partition topic; wait until everything is printed and committed; kill -9 the broker and
// restart it on the same data; produce more; check the union and the member ids; stop the
// members, then a new `consume --group --timeout-ms` prints nothing (all committed), and a
// `--count` member of another group resumes where its first run stopped.
#[test]
fn broker_restart_keeps_members_and_offsets() {
    let mut broker = Broker::start_with(BROKER_FLAGS);
    create_topic(&broker, "restart", 2);
    produce(&broker, "restart", 2, 10);
    let first = assert_success(&broker.sluice(
        &[
            "consume", "restart", "--group", "once", "--count", "5", "--format", "%p %o\\n",
        ],
        b"",
    ));
    assert_eq!(first.lines().count(), 5);
    let members = [
        Member::start(&broker, "restart", "r"),
        Member::start(&broker, "restart", "r"),
    ];
    wait_until("two members, everything printed", || {
        split(&describe(&broker, "r"), 2, 1)
            && union(&members.iter().collect::<Vec<_>>()).is_superset(&all_offsets(2, 10))
    });
    wait_until("offsets committed", || {
        describe(&broker, "r").rows.iter().all(|r| r.2 == "10")
    });
    let ids: BTreeSet<String> = describe(&broker, "r")
        .members
        .into_iter()
        .map(|m| m.0)
        .collect();
    broker.kill_and_restart();
    produce(&broker, "restart", 2, 10);
    wait_until("records produced after the restart printed", || {
        union(&members.iter().collect::<Vec<_>>()).is_superset(&all_offsets(2, 20))
    });
    wait_until("offsets committed after the restart", || {
        let described = describe(&broker, "r");
        described.rows.len() == 2 && described.rows.iter().all(|r| r.2 == "20")
    });
    let after: BTreeSet<String> = describe(&broker, "r")
        .members
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(after, ids, "members kept their ids across the restart");
    drop(members);
    wait_until("the killed members' sessions to expire", || {
        describe(&broker, "r").members.is_empty()
    });
    let rest = assert_success(&broker.sluice(
        &["consume", "restart", "--group", "r", "--timeout-ms", "3000"],
        b"",
    ));
    assert_eq!(
        rest, "",
        "everything was committed before the restart or after it"
    );
    let second = assert_success(&broker.sluice(
        &[
            "consume", "restart", "--group", "once", "--count", "35", "--format", "%p %o\\n",
        ],
        b"",
    ));
    let mut seen: BTreeSet<(i32, i64)> = first.lines().map(parse_line).collect();
    for line in second.lines() {
        assert!(
            seen.insert(parse_line(line)),
            "{line} read twice by group once"
        );
    }
    assert_eq!(seen, all_offsets(2, 20));
}

// Goal: two groups on one topic each see every record; `reset-offsets --to earliest` replays
// everything; `--to OFFSET` and `--to @UNIX_MS` set the offsets that `describe` then shows
// with the right lag; reset and delete refuse a group with an active member; delete removes
// an empty group from `list`. Method: `sluice consume --group` runs that end when idle and
// `sluice group` commands, with describe's lines parsed.
#[test]
fn two_groups_reset_describe_and_delete() {
    let broker = Broker::start_with(BROKER_FLAGS);
    create_topic(&broker, "shared", 2);
    produce(&broker, "shared", 2, 10);
    let consume = |group: &str| -> BTreeSet<(i32, i64)> {
        let args = [
            "consume",
            "shared",
            "--group",
            group,
            "--timeout-ms",
            "3000",
        ];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--format", "%p %o\\n"]);
        let out = assert_success(&broker.sluice(&args, b""));
        out.lines().map(parse_line).collect()
    };
    assert_eq!(consume("a"), all_offsets(2, 10));
    assert_eq!(
        consume("b"),
        all_offsets(2, 10),
        "a second group sees every record"
    );
    assert!(
        consume("a").is_empty(),
        "group a resumes at its committed end"
    );
    let reset = assert_success(&broker.sluice(
        &[
            "group",
            "reset-offsets",
            "a",
            "--topic",
            "shared",
            "--to",
            "earliest",
        ],
        b"",
    ));
    assert_eq!(reset.lines().count(), 2, "{reset}");
    assert_eq!(
        consume("a"),
        all_offsets(2, 10),
        "reset to earliest replays everything"
    );

    assert_success(&broker.sluice(
        &[
            "group",
            "reset-offsets",
            "a",
            "--topic",
            "shared",
            "--to",
            "7",
        ],
        b"",
    ));
    let described = describe(&broker, "a");
    assert_eq!(described.state, "Empty");
    assert_eq!(described.group_type, "consumer");
    assert_eq!(
        described.rows,
        vec![
            ("shared".into(), 0, "7".into(), "10".into(), "3".into()),
            ("shared".into(), 1, "7".into(), "10".into(), "3".into()),
        ]
    );
    // A partial run commits exactly what it printed: 4 of the 6 records left.
    let partial =
        assert_success(&broker.sluice(&["consume", "shared", "--group", "a", "--count", "4"], b""));
    assert_eq!(partial.lines().count(), 4);
    let lags: i64 = describe(&broker, "a")
        .rows
        .iter()
        .map(|r| r.4.parse::<i64>().expect("lag"))
        .sum();
    assert_eq!(lags, 2, "lag after consuming 4 of 6");
    let future = "@4102444800000"; // 2100-01-01: no record that late, so the end.
    assert_success(&broker.sluice(
        &[
            "group",
            "reset-offsets",
            "a",
            "--topic",
            "shared",
            "--to",
            future,
        ],
        b"",
    ));
    assert!(describe(&broker, "a").rows.iter().all(|r| r.4 == "0"));

    let list = assert_success(&broker.sluice(&["group", "list"], b""));
    assert!(list.lines().any(|l| l == "a\tconsumer\tEmpty"), "{list}");
    assert!(list.lines().any(|l| l == "b\tconsumer\tEmpty"), "{list}");

    let mut member = Member::start(&broker, "shared", "a");
    wait_until("a member in group a", || {
        describe(&broker, "a").members.len() == 1
    });
    let refused = broker.sluice(
        &[
            "group",
            "reset-offsets",
            "a",
            "--topic",
            "shared",
            "--to",
            "earliest",
        ],
        b"",
    );
    assert_error(&refused, 1, "active member");
    assert_error(
        &broker.sluice(&["group", "delete", "a"], b""),
        1,
        "active members",
    );
    member.kill();
    wait_until("the killed member's session to expire", || {
        describe(&broker, "a").members.is_empty()
    });
    let deleted = assert_success(&broker.sluice(&["group", "delete", "a"], b""));
    assert_eq!(deleted.trim(), "deleted group a");
    let list = assert_success(&broker.sluice(&["group", "list"], b""));
    assert!(!list.lines().any(|l| l.starts_with("a\t")), "{list}");
    assert_error(
        &broker.sluice(&["group", "describe", "a"], b""),
        1,
        "no such group",
    );
}

fn heartbeat(group: &str, member: &str, epoch: i32, owned: &[(&str, i32)]) -> Request {
    heartbeat_with_session(group, member, epoch, owned, 5_000)
}

fn heartbeat_with_session(
    group: &str,
    member: &str,
    epoch: i32,
    owned: &[(&str, i32)],
    session_timeout_ms: u32,
) -> Request {
    Request::GroupHeartbeat {
        group_id: group.into(),
        member_id: member.into(),
        member_epoch: epoch,
        client_id: "test".into(),
        session_timeout_ms,
        topics: vec!["bad".into()],
        owned: TopicPartitions::group(owned.iter().copied()),
    }
}

fn commit(group: &str, member: &str, epoch: i32, topic: &str, partition: i32) -> Request {
    Request::CommitOffsets {
        group_id: group.into(),
        member_id: member.into(),
        member_epoch: epoch,
        offsets: vec![OffsetCommit {
            topic: topic.into(),
            partition,
            offset: 1,
            metadata: String::new(),
        }],
    }
}

fn error_of(answer: &Response) -> ErrorCode {
    match answer {
        Response::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn commit_error(answer: &Response) -> Option<ErrorCode> {
    match answer {
        Response::Committed { partitions } => partitions[0].error,
        other => panic!("expected commit results, got {other:?}"),
    }
}

// Goal: bad group requests get their documented codes and leave the group working: a stale
// or future member epoch, an unknown member, a commit with an old epoch, a commit for a
// partition the member does not own, an out-of-range session timeout, an admin commit while
// the group has a member, unknown groups, and a heartbeat after leaving. Method: raw native
// requests through `Client::control` against a real broker.
#[test]
fn bad_group_requests_get_their_errors() {
    let broker = Broker::start_with(BROKER_FLAGS);
    create_topic(&broker, "bad", 2);
    create_topic(&broker, "other", 1);
    let address = broker.brokers();
    rt::block_on(async move {
        let client = Client::connect(ClientConfig::new([address]))
            .await
            .expect("connect");
        let joined = client
            .control(&heartbeat("gb", "", 0, &[]))
            .await
            .expect("join");
        let Response::GroupHeartbeat {
            member_id,
            member_epoch,
            assignment,
            ..
        } = joined
        else {
            panic!("join answer: {joined:?}");
        };
        assert!(member_epoch >= 1);
        let owned: Vec<(&str, i32)> = TopicPartitions::pairs(&assignment).collect();
        assert_eq!(owned, vec![("bad", 0), ("bad", 1)]);
        let id = member_id.as_str();
        let call = |request: Request| {
            let client = client.clone();
            async move { client.control(&request).await.expect("answer") }
        };
        let fenced = call(heartbeat("gb", id, member_epoch + 7, &owned)).await;
        assert_eq!(error_of(&fenced), ErrorCode::FencedMemberEpoch);
        let unknown = call(heartbeat("gb", "nobody", 3, &[])).await;
        assert_eq!(error_of(&unknown), ErrorCode::UnknownMemberId);
        let short = heartbeat_with_session("gb2", "", 0, &[], 10);
        assert_eq!(
            error_of(&call(short).await),
            ErrorCode::InvalidSessionTimeout
        );
        // The group still works after those: a normal heartbeat and commit succeed.
        let again = call(heartbeat("gb", id, member_epoch, &owned)).await;
        assert!(
            matches!(again, Response::GroupHeartbeat { .. }),
            "{again:?}"
        );
        assert_eq!(
            commit_error(&call(commit("gb", id, member_epoch, "bad", 0)).await),
            None
        );
        assert_eq!(
            commit_error(&call(commit("gb", id, member_epoch - 1, "bad", 0)).await),
            Some(ErrorCode::StaleMemberEpoch)
        );
        assert_eq!(
            commit_error(&call(commit("gb", id, member_epoch, "other", 0)).await),
            Some(ErrorCode::PartitionNotAssigned)
        );
        assert_eq!(
            commit_error(&call(commit("gb", "nobody", 1, "bad", 0)).await),
            Some(ErrorCode::UnknownMemberId)
        );
        assert_eq!(
            commit_error(&call(commit("gb", "", -1, "bad", 0)).await),
            Some(ErrorCode::UnknownMemberId),
            "no admin commit while the group has a member"
        );
        assert_eq!(
            commit_error(&call(commit("gb", id, member_epoch, "missing", 0)).await),
            Some(ErrorCode::UnknownTopicOrPartition)
        );
        let described = call(Request::DescribeGroup {
            group_id: "nosuch".into(),
        })
        .await;
        assert_eq!(error_of(&described), ErrorCode::GroupNotFound);
        let delete = call(Request::DeleteGroup {
            group_id: "gb".into(),
        })
        .await;
        assert_eq!(error_of(&delete), ErrorCode::GroupNotEmpty);
        let left = call(heartbeat("gb", id, -1, &[])).await;
        assert!(
            matches!(
                left,
                Response::GroupHeartbeat {
                    member_epoch: -1,
                    ..
                }
            ),
            "{left:?}"
        );
        let gone = call(heartbeat("gb", id, member_epoch, &owned)).await;
        assert_eq!(error_of(&gone), ErrorCode::UnknownMemberId);
        client.close().await;
    });
}
