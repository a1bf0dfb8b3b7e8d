//! A cluster of real `sluice broker` processes with the same `--seeds`, for the multi-process
//! cluster tests: [`Node`] (one broker's fixed identity: id, addresses, data directory, and
//! optionally the network namespace it runs in; started, killed with SIGKILL or stopped with
//! SIGTERM, restarted on the same data directory) and [`Cluster`] (the nodes, polling with a
//! deadline, the admin `/cluster` view).
//!
//! By default the brokers listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3 on free ports
//! ([`loopback_specs`]); a test that needs other addresses (network namespaces) builds its own
//! [`NodeSpec`]s.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{run_with_input, sluice_bin, terminate};

/// Longest any condition below may take to come true; a broker start, an election and a
/// fencing each take a few seconds at most.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How long a restarted broker's QUIC port may stay taken after the previous process was reaped.
const PORTS_FREE_DEADLINE: Duration = Duration::from_secs(10);

/// How long a broker may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

fn free_tcp(ip: &str) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).expect("bind a free TCP port");
    listener.local_addr().expect("bound")
}

fn free_udp(ip: &str) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).expect("bind a free UDP port");
    socket.local_addr().expect("bound")
}

/// The CPU broker `id` pins its single shard to: brokers spread over the machine's CPUs.
fn cpu_for(id: i32) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    usize::try_from(id).unwrap_or(0) % cpus
}

/// How to run one broker of a [`Cluster`].
pub struct NodeSpec {
    /// Broker id (also its seed id).
    pub id: i32,
    /// Kafka listener.
    pub kafka: SocketAddr,
    /// Shard 0's QUIC listener (advertised as is).
    pub quic: SocketAddr,
    /// Admin HTTP listener.
    pub admin: SocketAddr,
    /// Peer listener (its seed address).
    pub cluster: SocketAddr,
    /// Run the broker in this network namespace (`ip netns exec NAME`).
    pub netns: Option<String>,
    /// Data directory; default: `data` in the node's directory.
    pub data_dir: Option<PathBuf>,
    /// Flags after the ones the harness sets (addresses, seeds, `--cores 1`).
    pub flags: Vec<String>,
}

/// Three brokers on 127.0.0.1-3 with free ports, each run with `flags`.
pub fn loopback_specs(flags: &[&str]) -> Vec<NodeSpec> {
    (1..=3).map(|id| loopback_spec(id, flags)).collect()
}

/// Broker `id` on 127.0.0.`id` with free ports, run with `flags`.
pub fn loopback_spec(id: i32, flags: &[&str]) -> NodeSpec {
    let ip = format!("127.0.0.{id}");
    NodeSpec {
        id,
        kafka: free_tcp(&ip),
        quic: free_udp(&ip),
        admin: free_tcp(&ip),
        cluster: free_tcp(&ip),
        netns: None,
        data_dir: None,
        flags: flags.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// One broker's fixed identity: its id, addresses and data directory (kept across restarts).
pub struct Node {
    pub id: i32,
    pub kafka: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub cluster: SocketAddr,
    /// The node's directory: its log, and its data unless `data` is elsewhere.
    pub dir: PathBuf,
    /// The broker's `--data-dir`.
    pub data: PathBuf,
    netns: Option<String>,
    flags: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// A stopped node as `spec` says, its directory under `root`.
    fn new(spec: NodeSpec, root: &std::path::Path) -> Node {
        let node_dir = root.join(format!("broker-{}", spec.id));
        std::fs::create_dir_all(&node_dir).expect("broker dir");
        Node {
            id: spec.id,
            kafka: spec.kafka,
            quic: spec.quic,
            admin: spec.admin,
            cluster: spec.cluster,
            data: spec.data_dir.unwrap_or_else(|| node_dir.join("data")),
            dir: node_dir,
            netns: spec.netns,
            flags: spec.flags,
            child: None,
        }
    }

    pub fn start(&mut self, seeds: &str) {
        assert!(self.child.is_none(), "broker {} already running", self.id);
        if self.netns.is_none() {
            self.wait_ports_free();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("log file");
        // `ip netns exec` execs the broker after entering the namespace: the child's pid is
        // the broker's, so kill and wait reach the broker itself.
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(sluice_bin());
                command
            }
            None => Command::new(sluice_bin()),
        };
        let child = command
            .arg("broker")
            .args(["--node-id", &self.id.to_string()])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--quic-listen", &self.quic.to_string()])
            .args(["--kafka-listen", &self.kafka.to_string()])
            .args(["--admin-listen", &self.admin.to_string()])
            .args(["--cluster-listen", &self.cluster.to_string()])
            .args(["--seeds", seeds])
            .args(["--cores", "1"])
            // Brokers of one machine each on their own CPU where there are enough (else
            // they would all pin their shard to CPU 0).
            .args(["--cpuset", &cpu_for(self.id).to_string()])
            .args(&self.flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sluice broker");
        self.child = Some(child);
    }

    /// Waits (bounded) until this node's QUIC port can be bound again. A killed broker's UDP
    /// port was seen still taken right after it was reaped (likely the asynchronous teardown
    /// of its io_uring instance), and a restart that finds the port taken fails at once. (The TCP
    /// listeners rebind fine; probing them would wait on the killed connections' TIME_WAIT.)
    /// After the deadline the start goes ahead and fails visibly if the port is still taken.
    fn wait_ports_free(&self) {
        let deadline = Instant::now() + PORTS_FREE_DEADLINE;
        // Bounded by the deadline.
        while Instant::now() < deadline {
            if UdpSocket::bind(self.quic).is_ok() {
                return;
            }
            // Polling a condition: nothing signals that the kernel released a port.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("broker running");
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGTERM (a clean shutdown), then SIGKILL if the broker has not exited within
    /// `STOP_DEADLINE`; returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        let mut child = self.child.take().expect("broker running");
        terminate(&mut child, STOP_DEADLINE)
    }

    /// True while the broker is started and its process runs (it may have exited by itself,
    /// on a fatal error: then it is reaped and this is false).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        if child.try_wait().expect("poll the broker").is_some() {
            self.child = None;
            return false;
        }
        true
    }

    /// True when the broker was started by the test and has exited by itself since (a panic,
    /// a fatal error): its process is a zombie, not reaped yet. Needs no `&mut`, so polling
    /// conditions can check it.
    pub fn exited_by_itself(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
        // The state follows the command name in parentheses; Z is a zombie. An unreadable
        // stat of a child we have not reaped cannot happen, so it reads as "still running".
        stat.ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(false)
    }

    /// True when the broker was started and not killed or stopped by the test (it may have
    /// exited by itself).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    /// `GET /cluster` as JSON, if the broker answers.
    pub fn view(&self) -> Option<serde_json::Value> {
        let body = http_get(self.admin, "/cluster")?;
        serde_json::from_str(&body).ok()
    }

    pub fn sluice(&self, args: &[&str], brokers: &str) -> Output {
        let mut command = Command::new(sluice_bin());
        command.args(args).args(["--brokers", brokers]);
        run_with_input(command, b"")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET PATH` on `addr`: the body when the answer is 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    seeds: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three brokers on loopback (see [`loopback_specs`]), started.
    pub fn start(flags: &[&str]) -> Cluster {
        Cluster::start_specs(loopback_specs(flags))
    }

    /// Brokers as `specs` say, all started.
    pub fn start_specs(specs: Vec<NodeSpec>) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<Node> = specs
            .into_iter()
            .map(|spec| Node::new(spec, dir.path()))
            .collect();
        let seeds = nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.cluster))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            seeds,
            _dir: dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i);
        }
        cluster
    }

    /// Starts one more broker with the same seeds but outside them (an observer: it joins
    /// the cluster without a vote); returns its index in `nodes`.
    pub fn add_observer(&mut self, spec: NodeSpec) -> usize {
        let node = Node::new(spec, self._dir.path());
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        self.start_node(index);
        index
    }

    pub fn start_node(&mut self, index: usize) {
        let seeds = self.seeds.clone();
        self.nodes[index].start(&seeds);
    }

    pub fn node(&self, id: i64) -> &Node {
        self.nodes
            .iter()
            .find(|n| i64::from(n.id) == id)
            .expect("known broker id")
    }

    pub fn index_of(&self, id: i64) -> usize {
        self.nodes
            .iter()
            .position(|n| i64::from(n.id) == id)
            .expect("known broker id")
    }

    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// QUIC bootstrap list of the running brokers, `first` (if given) in front.
    pub fn quic_brokers(&self, first: Option<SocketAddr>) -> String {
        let mut list: Vec<String> = first.iter().map(ToString::to_string).collect();
        list.extend(self.running().map(|n| n.quic.to_string()));
        list.join(",")
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- broker {} ---\n{}", n.id, n.log()))
            .collect()
    }

    /// Polls `condition` until it holds, failing with the brokers' logs at the deadline.
    pub fn wait_for<T>(&self, what: &str, condition: impl FnMut(&Cluster) -> Option<T>) -> T {
        self.wait_for_within(DEADLINE, what, condition)
    }

    /// As [`Cluster::wait_for`] with another deadline.
    pub fn wait_for_within<T>(
        &self,
        patience: Duration,
        what: &str,
        mut condition: impl FnMut(&Cluster) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(value) = condition(self) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {patience:?} waiting for {what}\n{}",
                self.logs()
            );
            // Polling a condition across processes; no event to wait on.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running broker names the same live controller and sees `alive`
    /// unfenced registrations; returns the controller.
    pub fn wait_converged(&self, alive: usize) -> i64 {
        self.wait_for("a controller and registrations", |cluster| {
            let mut controllers = Vec::new();
            for node in cluster.running() {
                let view = node.view()?;
                let controller = view["controller"].as_i64()?;
                let live = view["brokers"]
                    .as_array()?
                    .iter()
                    .filter(|b| b["fenced"] == serde_json::Value::Bool(false))
                    .count();
                if controller < 0 || live != alive {
                    return None;
                }
                controllers.push(controller);
            }
            controllers.dedup();
            (controllers.len() == 1).then(|| controllers[0])
        })
    }
}
