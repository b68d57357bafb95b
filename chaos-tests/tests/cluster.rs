//! A three-server cluster as real processes (issue "A three-server cluster"): replication,
//! failover, restart of every server, membership changes, and bad input (DESIGN §5, §11).

use std::time::{Duration, Instant};

use tonic::Code;
use xene_chaos_tests::harness::{bin_dir, free_port, ClusterOptions, TestCluster, SECRET};
use xene_proto as pb;

async fn put(cluster: &TestCluster, index: usize, key: &str, value: &str) -> Result<u64, tonic::Status> {
    let request = cluster.request(pb::PutRequest { key: key.into(), value: value.into(), id: None, prev_kv: false });
    let reply = cluster.kv(index).put(request).await?.into_inner();
    Ok(reply.header.map_or(0, |h| h.revision))
}

async fn get(
    cluster: &TestCluster,
    index: usize,
    key: &str,
    serializable: bool,
) -> Result<Option<String>, tonic::Status> {
    let request = cluster.request(pb::RangeRequest { key: key.into(), prefix: false, limit: 0, serializable });
    let reply = cluster.kv(index).range(request).await?.into_inner();
    Ok(reply.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Retries `put` on every running server in turn until one acknowledges it.
async fn put_anywhere(cluster: &TestCluster, key: &str, value: &str, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        for index in 0..cluster.servers.len() {
            if !cluster.servers[index].is_running() {
                continue;
            }
            if let Ok(revision) = put(cluster, index, key, value).await {
                return revision;
            }
        }
        assert!(Instant::now() < deadline, "no server acknowledged {key} within {timeout:?}\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until server `index` serves `key` with `value` from its own state.
async fn wait_value(cluster: &TestCluster, index: usize, key: &str, value: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(found)) = get(cluster, index, key, true).await {
            if found == value {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} never served {key}={value}\n{}",
            cluster.servers[index].id,
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_replicate_writes_made_through_any_server() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    for writer in 0..3 {
        let key = format!("written-via-{writer}");
        put(&cluster, writer, &key, "v").await.unwrap_or_else(|e| panic!("put via {writer}: {e}\n{}", cluster.logs()));
        for reader in 0..3 {
            // A linearizable read from any server sees the acknowledged write at once.
            let value = get(&cluster, reader, &key, false).await.expect("linearizable read");
            assert_eq!(value.as_deref(), Some("v"), "read of {key} via server {reader}");
        }
    }
    // The first admin token is in the bootstrap server's data directory, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(cluster.servers[0].data_dir.join("admin.token")).expect("token file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Health and readiness on every server's REST port.
    for server in &cluster.servers {
        for path in ["healthz", "readyz", "metrics"] {
            let body = http_get(&server.http, path).await;
            assert!(body.starts_with("HTTP/1.1 200"), "{path} on node {}: {body}", server.id);
            if path == "metrics" {
                assert!(body.contains("xene_raft_term"), "metrics lack the raft term: {body}");
                assert!(body.contains("xene_api_requests_total"), "metrics lack API counts: {body}");
            }
        }
    }
}

/// A minimal HTTP/1.1 GET, enough for the health endpoints.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect REST port");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("read");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_loses_nothing() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let key = format!("before/{i}");
        put_anywhere(&cluster, &key, "1", Duration::from_secs(10)).await;
        acknowledged.push(key);
    }
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let killed_at = Instant::now();
    cluster.servers[leader].kill();
    let revision = put_anywhere(&cluster, "after-kill", "1", Duration::from_secs(20)).await;
    let failover = killed_at.elapsed();
    println!(
        "failover: first write acknowledged {} ms after SIGKILL of the leader (revision {revision})",
        failover.as_millis()
    );
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    for key in &acknowledged {
        assert_eq!(get(&cluster, new_leader, key, false).await.expect("read").as_deref(), Some("1"), "{key} lost");
    }
    // The killed server restarts from its data directory and catches up.
    cluster.servers[leader].restart();
    wait_value(&cluster, leader, "after-kill", "1", Duration::from_secs(20)).await;
}

/// The value of the `xene_api_requests_total` series of `method` with code 0 on server
/// `index` (0 when the server has not counted one).
async fn requests_counted(cluster: &TestCluster, index: usize, method: &str) -> u64 {
    let body = http_get(&cluster.servers[index].http, "metrics").await;
    let series = format!("xene_api_requests_total{{method=\"xene.v1.RaftService/{method}\",code=\"0\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap_or_else(|e| panic!("{series}{value}: {e}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_sends_its_entries_on_one_stream_per_follower_and_reopens_it_after_a_restart() {
    // A message without an answer within its heartbeat interval rightly costs its stream (a
    // late answer must not be read as the next one's). With the default 50 ms a loaded CI
    // machine once opened four new streams during the 30 writes; with a slow heartbeat the
    // count below is about streams, not about how busy the machine is.
    let mut cluster = TestCluster::start(ClusterOptions::slow_heartbeat()).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    put_anywhere(&cluster, "warm-up", "1", Duration::from_secs(10)).await;
    wait_value(&cluster, follower, "warm-up", "1", Duration::from_secs(10)).await;
    let streams = requests_counted(&cluster, follower, "AppendStream").await;
    let appends = requests_counted(&cluster, follower, "AppendEntries").await;
    assert!(streams >= 1, "the follower was sent no append stream\n{}", cluster.logs());
    for i in 0..30 {
        put(&cluster, leader, &format!("streamed/{i}"), "v").await.expect("put through the leader");
    }
    wait_value(&cluster, follower, "streamed/29", "v", Duration::from_secs(10)).await;
    let more_appends = requests_counted(&cluster, follower, "AppendEntries").await - appends;
    assert!(more_appends >= 30, "30 writes reached the follower in {more_appends} AppendEntries");
    let opened = requests_counted(&cluster, follower, "AppendStream").await - streams;
    assert_eq!(opened, 0, "30 writes opened {opened} new streams instead of using the open one\n{}", cluster.logs());

    // A clean stop ends the streams it serves: left open, they held it for 10 s. The leader's
    // link opens a new one to the restarted follower, which then catches up.
    assert!(
        cluster.servers[follower].terminate(Duration::from_secs(5)),
        "SIGTERM exits cleanly within 5 s\n{}",
        cluster.logs()
    );
    put(&cluster, leader, "while-stopped", "1").await.expect("a quorum of two still writes");
    cluster.servers[follower].restart();
    wait_value(&cluster, follower, "while-stopped", "1", Duration::from_secs(20)).await;
    put(&cluster, leader, "after-restart", "1").await.expect("put after the restart");
    wait_value(&cluster, follower, "after-restart", "1", Duration::from_secs(10)).await;
    assert!(
        requests_counted(&cluster, follower, "AppendStream").await >= 1,
        "the restarted follower was sent no append stream\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_its_writes_on_one_stream_and_opens_one_to_the_next_leader() {
    // Slow timing, as in the append-stream test above: the counts are about streams, which an
    // election or a missed deadline on a loaded machine would move.
    let mut cluster = TestCluster::start(ClusterOptions::slow_heartbeat()).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    put(&cluster, follower, "warm-up", "1").await.expect("put through a follower");
    let streams = requests_counted(&cluster, leader, "ProposeStream").await;
    let proposals = requests_counted(&cluster, leader, "Propose").await;
    assert!(streams >= 1, "the follower opened no forwarding stream\n{}", cluster.logs());
    for i in 0..30 {
        put(&cluster, follower, &format!("forwarded/{i}"), "v").await.expect("put through the follower");
    }
    let more = requests_counted(&cluster, leader, "Propose").await - proposals;
    assert!(more >= 30, "30 writes through the follower reached the leader in {more} proposals");
    assert_eq!(
        requests_counted(&cluster, leader, "ProposeStream").await,
        streams,
        "30 forwarded writes opened new streams instead of using the open one"
    );

    // The leader dies with the stream open; the follower's writes go to the next leader,
    // on a new stream, whichever server that is.
    cluster.servers[leader].kill();
    let next = cluster.wait_leader(Duration::from_secs(10)).await;
    let writer = (0..3).find(|&i| i != leader && i != next).expect("a third server");
    put_anywhere(&cluster, "settled", "1", Duration::from_secs(10)).await;
    for i in 0..10 {
        put(&cluster, writer, &format!("after-failover/{i}"), "v").await.expect("put through the other follower");
    }
    assert!(
        requests_counted(&cluster, next, "ProposeStream").await >= 1,
        "no forwarding stream reached the next leader\n{}",
        cluster.logs()
    );
    assert!(requests_counted(&cluster, next, "Propose").await >= 10);
    assert_eq!(get(&cluster, next, "forwarded/29", false).await.expect("read").as_deref(), Some("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_streams_refuse_a_caller_without_the_secret_and_end_on_a_message_they_cannot_read() {
    use pb::raft_service_client::RaftServiceClient;
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    put(&cluster, leader, "before", "1").await.expect("put before");
    fn with_secret<T>(messages: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(messages);
        request.metadata_mut().insert(pb::CLUSTER_SECRET_HEADER, SECRET.parse().expect("secret as metadata"));
        request
    }

    // The append stream, on a follower.
    let mut client = RaftServiceClient::new(cluster.channel(follower));
    let garbage = || tokio_stream::iter(vec![pb::RaftPayload { data: vec![0xff; 16] }]);
    let refused = client.append_stream(tonic::Request::new(garbage())).await.expect_err("no secret, no stream");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("cluster secret"), "the refusal says what is missing: {refused:?}");
    let request = with_secret(garbage());
    let mut answers = client.append_stream(request).await.expect("the stream opens with the secret").into_inner();
    let error = answers.message().await.expect_err("a message that is no AppendEntries ends the stream");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("append entries request"), "the error says what it could not read: {error:?}");

    // The forwarding stream, on the leader.
    let mut client = RaftServiceClient::new(cluster.channel(leader));
    let garbage = || tokio_stream::iter(vec![pb::ProposeFrame { id: 7, data: vec![0xff; 16] }]);
    let refused = client.propose_stream(tonic::Request::new(garbage())).await.expect_err("no secret, no stream");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let request = with_secret(garbage());
    let mut answers = client.propose_stream(request).await.expect("the stream opens with the secret").into_inner();
    let error = answers.message().await.expect_err("a message that is no proposal ends the stream");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("forwarded proposal"), "the error says what it could not read: {error:?}");

    // Nothing changed: the follower still follows the same leader and takes its entries.
    assert_eq!(cluster.wait_leader(Duration::from_secs(5)).await, leader, "the leader changed");
    put(&cluster, leader, "after", "1").await.expect("put after");
    put(&cluster, follower, "forwarded-after", "1").await.expect("put through the follower after");
    wait_value(&cluster, follower, "after", "1", Duration::from_secs(10)).await;
    assert_eq!(get(&cluster, follower, "before", true).await.expect("read").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_server_at_once_loses_nothing() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    for i in 0..50 {
        put_anywhere(&cluster, &format!("k/{i:02}"), &format!("v{i}"), Duration::from_secs(10)).await;
    }
    // One clean stop (SIGTERM: in-flight work finishes, the database closes, exit 0), then
    // SIGKILL for the rest, all at once.
    assert!(cluster.servers[0].terminate(Duration::from_secs(15)), "SIGTERM exits cleanly\n{}", cluster.logs());
    for server in &mut cluster.servers {
        server.kill();
    }
    for server in &mut cluster.servers {
        server.restart();
    }
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let request =
        cluster.request(pb::RangeRequest { key: b"k/".to_vec(), prefix: true, limit: 0, serializable: false });
    let reply = cluster.kv(leader).range(request).await.expect("range after restart").into_inner();
    assert_eq!(reply.kvs.len(), 50, "every acknowledged key survives");
    for (i, kv) in reply.kvs.iter().enumerate() {
        assert_eq!(kv.value, format!("v{i}").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_keep_the_cluster_serving() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    // A writer runs through every change; each write must eventually be acknowledged.
    let mut written = 0;
    async fn write(cluster: &TestCluster, written: &mut u32) {
        *written += 1;
        put_anywhere(cluster, &format!("during/{written:03}"), "x", Duration::from_secs(20)).await;
    }
    write(&cluster, &mut written).await;

    let via = cluster.servers[0].grpc.clone();
    let fourth = cluster.add_server(4, Some(&via));
    cluster.wait_voters(4, Duration::from_secs(60)).await;
    write(&cluster, &mut written).await;
    wait_value(&cluster, fourth, "during/002", "x", Duration::from_secs(20)).await;

    // Remove a follower.
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (0..cluster.servers.len()).find(|i| *i != leader && *i != fourth).expect("a follower");
    let follower_id = cluster.servers[follower].id;
    let removed = cluster
        .cluster_client(leader)
        .remove_member(cluster.request(pb::RemoveMemberRequest { node_id: follower_id }))
        .await
        .unwrap_or_else(|e| panic!("remove follower: {e}\n{}", cluster.logs()))
        .into_inner();
    assert!(removed.members.iter().all(|m| m.node_id != follower_id));
    cluster.servers[follower].terminate(Duration::from_secs(10));
    write(&cluster, &mut written).await;

    // Remove the leader, asking a follower (the call is forwarded to the leader).
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let leader_id = cluster.servers[leader].id;
    let asked = (0..cluster.servers.len()).find(|i| *i != leader && cluster.servers[*i].is_running()).expect("another");
    cluster
        .cluster_client(asked)
        .remove_member(cluster.request(pb::RemoveMemberRequest { node_id: leader_id }))
        .await
        .unwrap_or_else(|e| panic!("remove leader: {e}\n{}", cluster.logs()));
    cluster.wait_voters(2, Duration::from_secs(30)).await;
    let new_leader = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(cluster.servers[new_leader].id, leader_id);
    cluster.servers[leader].terminate(Duration::from_secs(10));
    write(&cluster, &mut written).await;

    // Every write made during the changes is there.
    let request =
        cluster.request(pb::RangeRequest { key: b"during/".to_vec(), prefix: true, limit: 0, serializable: false });
    let reply = cluster.kv(new_leader).range(request).await.expect("range").into_inner();
    assert_eq!(reply.kvs.len(), 4);

    // The removed IDs are never reused.
    let rejoin = cluster
        .cluster_client(new_leader)
        .add_member(cluster.request(pb::AddMemberRequest {
            node_id: follower_id,
            grpc_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
        }))
        .await
        .expect_err("a removed node ID is refused");
    assert_eq!(rejoin.code(), Code::FailedPrecondition, "{rejoin}");
    assert!(rejoin.message().contains("never reused"), "{rejoin}");
}

/// DESIGN §4.7 across processes: once the leader's log no longer reaches back to the start
/// (a snapshot every 20 entries, the log behind it purged), a new member catches up from a
/// snapshot sent over the network in chunks, and holds every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_catches_up_from_a_snapshot_when_the_log_is_purged() {
    let mut cluster = TestCluster::start(ClusterOptions { snapshot_logs: 20, ..ClusterOptions::default() }).await;
    for n in 0..200 {
        put_anywhere(&cluster, &format!("before/{n:03}"), &"v".repeat(200), Duration::from_secs(20)).await;
    }
    let via = cluster.servers[0].grpc.clone();
    let fourth = cluster.add_server(4, Some(&via));
    cluster.wait_voters(4, Duration::from_secs(60)).await;
    put_anywhere(&cluster, "after", "x", Duration::from_secs(20)).await;
    wait_value(&cluster, fourth, "after", "x", Duration::from_secs(20)).await;
    let request =
        cluster.request(pb::RangeRequest { key: b"before/".to_vec(), prefix: true, limit: 0, serializable: true });
    let reply = cluster.kv(fourth).range(request).await.expect("range on the new member").into_inner();
    assert_eq!(reply.kvs.len(), 200, "the new member holds every key written before it joined");
    let log = cluster.servers[fourth].log_tail(100_000);
    assert!(
        log.contains("installing a snapshot received from the leader"),
        "the new member caught up without a snapshot, so the test did not test it:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_can_be_transferred() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let target = (leader + 1) % 3;
    let target_id = cluster.servers[target].id;
    let started = Instant::now();
    let reply = cluster
        .cluster_client(leader)
        .transfer_leader(cluster.request(pb::TransferLeaderRequest { node_id: target_id }))
        .await
        .unwrap_or_else(|e| panic!("transfer: {e}\n{}", cluster.logs()))
        .into_inner();
    println!("leadership moved to node {} in {} ms", reply.leader_id, started.elapsed().as_millis());
    assert_eq!(reply.leader_id, target_id);
    assert_eq!(cluster.wait_leader(Duration::from_secs(10)).await, target);
    put(&cluster, target, "after-transfer", "1").await.expect("the new leader serves writes");
}

/// Through a follower (so the answer is forwarded from the leader) and through the leader, a
/// put or delete answers with what it replaced only when the request sets `prev_kv`, as
/// etcd's do; the count of removed keys comes either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_with_what_they_replaced_only_when_asked() {
    let cluster = TestCluster::start(ClusterOptions::default()).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    for index in [(leader + 1) % 3, leader] {
        let mut kv = cluster.kv(index);
        let key = |name: &str| format!("prev/{index}/{name}").into_bytes();
        let put = |name: &str, value: &str, prev_kv: bool| {
            cluster.request(pb::PutRequest { key: key(name), value: value.into(), id: None, prev_kv })
        };
        kv.put(put("a", "1", false)).await.expect("put");
        let quiet = kv.put(put("a", "2", false)).await.expect("put").into_inner();
        assert_eq!(quiet.prev_kv, None, "not asked for");
        let asked = kv.put(put("a", "3", true)).await.expect("put").into_inner();
        let prev = asked.prev_kv.expect("asked for, and the key existed");
        assert_eq!((prev.value.as_slice(), prev.version), (&b"2"[..], 2));
        kv.put(put("b", "1", false)).await.expect("put");
        kv.put(put("c", "1", false)).await.expect("put");

        let delete = |name: &str, prefix: bool, prev_kv: bool| {
            cluster.request(pb::DeleteRequest { key: key(name), prefix, id: None, prev_kv })
        };
        let quiet = kv.delete(delete("a", false, false)).await.expect("delete").into_inner();
        assert_eq!((quiet.deleted, quiet.prev_kvs.len()), (1, 0));
        let asked = kv.delete(delete("b", false, true)).await.expect("delete").into_inner();
        assert_eq!(asked.deleted, 1);
        assert_eq!(asked.prev_kvs.iter().map(|kv| kv.value.as_slice()).collect::<Vec<_>>(), [&b"1"[..]]);
        kv.put(put("d", "1", false)).await.expect("put");
        let quiet = kv.delete(delete("", true, false)).await.expect("delete").into_inner();
        assert_eq!((quiet.deleted, quiet.prev_kvs.len()), (2, 0), "c and d, counted, not returned");
        let left = cluster
            .kv(index)
            .range(cluster.request(pb::RangeRequest { key: key(""), prefix: true, limit: 0, serializable: false }))
            .await
            .expect("range")
            .into_inner();
        assert!(left.kvs.is_empty(), "{:?}", left.kvs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    put(&cluster, 0, "stable", "1").await.expect("put");
    let before = get(&cluster, 0, "stable", false).await.expect("get");

    // No token, and a wrong token.
    let mut kv = cluster.kv(1);
    let no_token = kv
        .put(tonic::Request::new(pb::PutRequest { key: "stable".into(), value: "2".into(), id: None, prev_kv: false }))
        .await
        .expect_err("no token");
    assert_eq!(no_token.code(), Code::Unauthenticated);
    assert!(no_token.message().contains("token"), "{no_token}");
    let mut wrong =
        tonic::Request::new(pb::PutRequest { key: "stable".into(), value: "2".into(), id: None, prev_kv: false });
    wrong.metadata_mut().insert("authorization", "Bearer xene_000000000000_nope".parse().expect("ascii"));
    assert_eq!(kv.put(wrong).await.expect_err("wrong token").code(), Code::Unauthenticated);

    // A failed compare runs the else branch only.
    let txn = pb::TxnRequest {
        compare: vec![pb::Compare {
            key: "stable".into(),
            result: pb::compare::Result::Equal as i32,
            target: Some(pb::compare::Target::Value("not-the-value".into())),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::Put(pb::PutRequest {
                key: "stable".into(),
                value: "3".into(),
                id: None,
                prev_kv: false,
            })),
        }],
        failure: vec![],
        id: None,
    };
    let reply = cluster.kv(2).txn(cluster.request(txn)).await.expect("txn").into_inner();
    assert!(!reply.succeeded);

    // A value over the limit.
    let big = pb::PutRequest { key: "stable".into(), value: vec![b'x'; 1024 * 1024 + 1], id: None, prev_kv: false };
    let too_big = cluster.kv(0).put(cluster.request(big)).await.expect_err("oversized value");
    assert_eq!(too_big.code(), Code::InvalidArgument, "{too_big}");
    assert!(too_big.message().contains("limit"), "{too_big}");

    // An empty key.
    let empty = cluster
        .kv(0)
        .put(cluster.request(pb::PutRequest { key: vec![], value: vec![], id: None, prev_kv: false }))
        .await;
    assert_eq!(empty.expect_err("empty key").code(), Code::InvalidArgument);

    // Removing a node that is not a member.
    let unknown = cluster
        .cluster_client(0)
        .remove_member(cluster.request(pb::RemoveMemberRequest { node_id: 42 }))
        .await
        .expect_err("unknown node");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown}");
    assert!(unknown.message().contains("42"), "{unknown}");

    // A server with the wrong cluster secret cannot join.
    let via = cluster.servers[0].grpc.clone();
    let intruder = cluster.add_server_with_secret(9, Some(&via), "the-wrong-secret");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = cluster.status(0).await.expect("status");
    assert!(status.members.iter().all(|m| m.node_id != 9), "the intruder was admitted");
    assert!(
        cluster.servers[intruder].log_tail(50).contains("cluster secret"),
        "the intruder's log says why: {}",
        cluster.servers[intruder].log_tail(50)
    );
    cluster.servers[intruder].kill();

    assert_eq!(get(&cluster, 0, "stable", false).await.expect("get"), before, "nothing changed");
}

/// A server restarted with `--bootstrap` once its bootstrap is done changes nothing (its
/// `admin.token` stays); one whose bootstrap was cut short before the first admin token was
/// stored (simulated by removing the record of it) finishes it, through whichever server leads
/// (a review found such a cluster left with no admin token for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_cut_short_is_finished_on_restart_and_a_finished_one_left_alone() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    let path = cluster.servers[0].data_dir.join("admin.token");
    let first = std::fs::read_to_string(&path).expect("admin.token");
    let bootstrapped = |cluster: &TestCluster| {
        let request = cluster.request(pb::RangeRequest {
            key: b"/xene/cluster/bootstrapped".to_vec(),
            prefix: false,
            limit: 0,
            serializable: false,
        });
        let mut kv = cluster.kv(1);
        async move { kv.range(request).await.map(|reply| reply.into_inner().kvs.len()) }
    };
    assert_eq!(bootstrapped(&cluster).await.expect("range"), 1);

    cluster.servers[0].restart_bootstrapping();
    cluster.wait_voters(3, Duration::from_secs(20)).await;
    put_anywhere(&cluster, "after-restart", "1", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(std::fs::read_to_string(&path).expect("admin.token"), first, "a finished bootstrap is left alone");

    let request = cluster.request(pb::DeleteRequest {
        key: b"/xene/cluster/bootstrapped".to_vec(),
        prefix: false,
        id: None,
        prev_kv: false,
    });
    cluster.kv(1).delete(request).await.expect("delete the record of the bootstrap");
    assert_eq!(bootstrapped(&cluster).await.expect("range"), 0);
    cluster.servers[0].restart_bootstrapping();
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() && text != first {
            break text;
        }
        assert!(Instant::now() < deadline, "no new admin token:\n{}", cluster.servers[0].log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The file is written before the token is stored (a token in a file may never be valid;
    // a valid one is never lost): wait for the record.
    while bootstrapped(&cluster).await.expect("range") != 1 {
        assert!(Instant::now() < deadline, "the bootstrap is not recorded again:\n{}", cluster.servers[0].log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut request =
        tonic::Request::new(pb::RangeRequest { key: b"/".to_vec(), prefix: true, limit: 1, serializable: false });
    request.metadata_mut().insert("authorization", format!("Bearer {}", second.trim()).parse().expect("ascii"));
    cluster.kv(2).range(request).await.expect("the new admin token works");
}

/// A data directory whose `node-id` file was lost still refuses another node ID: its database
/// remembers the node it was first opened as (the log and vote in it are that node's), and the
/// refused start writes nothing. Started as its own node again, the server rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_refuses_another_node_id_even_without_its_node_id_file() {
    let mut cluster = TestCluster::start(ClusterOptions::default()).await;
    put_anywhere(&cluster, "before", "1", Duration::from_secs(20)).await;
    let index = 2;
    let (id, data_dir) = (cluster.servers[index].id, cluster.servers[index].data_dir.clone());
    assert!(cluster.servers[index].terminate(Duration::from_secs(10)), "a clean stop");
    std::fs::remove_file(data_dir.join("node-id")).expect("remove the node-id file");

    let other = (id + 10).to_string();
    let mut intruder = std::process::Command::new(bin_dir().join("xene-server"))
        .args(["--node-id", &other, "--data-dir", &data_dir.display().to_string(), "--cluster-secret", SECRET])
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start xene-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = intruder.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = intruder.kill();
            panic!("xene-server ran as node {other} on node {id}'s data directory");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = intruder.wait_with_output().expect("output");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!status.success(), "refused: {said}");
    assert!(
        said.contains(&format!("belongs to node {id}")) && said.contains(&format!("start it as node {id}")),
        "{said}"
    );
    assert!(!data_dir.join("node-id").exists(), "the refused start wrote no node-id file");

    cluster.servers[index].restart();
    put_anywhere(&cluster, "after", "2", Duration::from_secs(20)).await;
    wait_value(&cluster, index, "after", "2", Duration::from_secs(20)).await;
    let recorded = std::fs::read_to_string(data_dir.join("node-id")).expect("node-id written again");
    assert_eq!(recorded.trim(), id.to_string());
}

/// The harness picks ports before its servers bind them, and anything may take one in
/// between (another test's process, an outgoing connection's local port): a CI run once lost
/// a test to it. A server that finds a port taken is started again on other free ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_server_whose_port_was_taken_before_it_started_moves_to_free_ones() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let taken = squatter.local_addr().expect("local addr").to_string();
    let mut plan = xene_chaos_tests::harness::ServerPlan::on_free_ports();
    plan.http = taken.clone();
    let options = ClusterOptions { servers: 1, ..ClusterOptions::default() };
    let cluster = TestCluster::start_planned(options, vec![plan]).await;
    let server = &cluster.servers[0];
    assert_ne!(server.http, taken, "the server kept the taken port");
    let log = server.log_tail(200);
    assert!(log.contains("is the port in use?"), "the first start did not meet the taken port:\n{log}");
    put(&cluster, 0, "moved", "v").await.expect("a write to the moved server");
    drop(squatter);
}

/// A server that cannot listen says which address and stops before it creates or opens
/// anything: started again on a free port, it bootstraps as if the first start never happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_port_is_taken_stops_with_the_address_and_leaves_no_data_directory() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let taken = squatter.local_addr().expect("local addr").to_string();
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = tmp.path().join("node-1");
    let output = std::process::Command::new(bin_dir().join("xene-server"))
        .args(["--node-id", "1", "--data-dir", &data_dir.display().to_string(), "--cluster-secret", SECRET])
        .args(["--bootstrap", "--grpc-addr", &format!("127.0.0.1:{}", free_port()), "--http-addr", &taken])
        .output()
        .expect("run xene-server");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "xene-server ran on a taken port: {said}");
    assert!(said.contains(&format!("binding --http-addr {taken}; is the port in use?")), "{said}");
    assert!(!data_dir.exists(), "the refused start created {}", data_dir.display());
    drop(squatter);
}
