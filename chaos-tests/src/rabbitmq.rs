//! A private RabbitMQ broker per test: free ports, its own HOME, data and Erlang
//! cookie; start, stop, SIGKILL and restart on the same data (quorum queues and
//! persistent messages survive), `rabbitmqctl` with the same environment, and a
//! clean stop (broker and its epmd) on drop.
//!
//! It runs the server script straight from the package's
//! `/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/` folder: the `/usr/sbin` wrappers
//! switch to the `rabbitmq` user (another HOME, another cookie, so every CLI call
//! fails to authenticate) and log to /var/log. `RUNNING_UNDER_SYSTEMD` makes the
//! script `exec` the VM rather than wait on it from a signal-trapping shell, and
//! [`RabbitMq::kill`] also SIGKILLs the pid the VM wrote into its pid file, so it is
//! the broker itself that dies, not a shell around it. Erlang's
//! busy-waiting schedulers are turned off (`+sbwt none ...`): they burn whole cores
//! of a small machine while idle.
//!
//! Measured on the 2-core build machine (RabbitMQ 3.10.8, Erlang 25.2.3, with the
//! shovel plugin): [`RabbitMq::start`] returns after about 4.7 s (the AMQP port opens,
//! then `await_startup`), a start on existing data after about 3.7 s; `stop()` takes
//! about 1.5 s, `kill()` 20 ms.
//!
//! A missing server (the `rabbitmq-server` package) fails the test with a message
//! saying how to install it; it never skips.

use crate::cluster::procs::free_port;

/// How [`RabbitMq::try_spawn`]'s error starts when the port answered but the broker
/// never came up.
const AWAIT_FAILED: &str = "rabbitmqctl await_startup failed";
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One private broker. Dropping it stops the broker and its epmd.
pub struct RabbitMq {
    /// The AMQP port on 127.0.0.1.
    pub port: u16,
    dist_port: u16,
    epmd_port: u16,
    nodename: String,
    sbin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The package's `sbin` folder (`rabbitmq_server-<version>/sbin`), found by glob.
fn sbin_dir() -> PathBuf {
    let base = Path::new("/usr/lib/rabbitmq/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rabbitmq_server-"))
                && p.join("sbin/rabbitmq-server").exists()
        })
        .collect();
    // Newest version last (lexicographic is enough for one installed package).
    found.sort();
    match found.pop() {
        Some(dir) => dir.join("sbin"),
        None => panic!(
            "these tests need a real RabbitMQ broker, and none was found under {}: \
             install it with `apt-get install rabbitmq-server` or run ./test.sh",
            base.display()
        ),
    }
}

impl RabbitMq {
    /// Starts a broker without plugins and waits until it is fully booted.
    pub fn start() -> RabbitMq {
        RabbitMq::start_with_plugins(&[])
    }

    /// Starts a broker with `plugins` enabled (e.g. `rabbitmq_shovel`).
    pub fn start_with_plugins(plugins: &[&str]) -> RabbitMq {
        let mut mq = RabbitMq::prepare(plugins, None);
        mq.spawn_fresh();
        mq
    }

    /// Starts `members` brokers joined into one RabbitMQ cluster (one Erlang cookie, one
    /// epmd they all register with), the first one started first and the others joined to
    /// it. Quorum queues declared on it are then replicated to every member.
    pub fn start_cluster(members: usize) -> Vec<RabbitMq> {
        let cookie: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..32)
                .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
                .collect()
        };
        let epmd_port = free_port();
        let mut out: Vec<RabbitMq> = Vec::new();
        for i in 0..members {
            let mut mq = RabbitMq::prepare(&[], Some((&cookie, epmd_port)));
            mq.spawn_fresh();
            if i > 0 {
                let first = out[0].nodename.clone();
                mq.ctl_ok(&["-q", "stop_app"]);
                mq.ctl_ok(&["-q", "join_cluster", &first]);
                mq.ctl_ok(&["-q", "start_app"]);
            }
            out.push(mq);
        }
        let status = out[0].ctl_ok(&["-q", "cluster_status", "--formatter", "json"]);
        let running = serde_json::from_str::<serde_json::Value>(&status)
            .ok()
            .and_then(|v| v["running_nodes"].as_array().map(Vec::len))
            .unwrap_or(0);
        assert_eq!(
            running, members,
            "the RabbitMQ cluster did not form: {status}"
        );
        out
    }

    /// A broker's folders and ports, not started. `cluster`: the shared Erlang cookie
    /// and epmd port of a cluster.
    fn prepare(plugins: &[&str], cluster: Option<(&str, u16)>) -> RabbitMq {
        let dir = tempfile::tempdir().expect("temp dir for the broker");
        std::fs::write(
            dir.path().join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .expect("write enabled_plugins");
        // `rabbitmq.conf`: keep the disk alarm from blocking publishers on a full-ish
        // test machine (the default limit is 50 MB free).
        std::fs::write(
            dir.path().join("rabbitmq.conf"),
            "disk_free_limit.absolute = 1MB\nloopback_users.guest = true\n",
        )
        .expect("write rabbitmq.conf");
        std::fs::create_dir_all(dir.path().join("home")).expect("broker HOME");
        let unique = format!(
            "strait{}x{}",
            std::process::id(),
            dir.path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("q")
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        if let Some((cookie, _)) = cluster {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join("home/.erlang.cookie");
            std::fs::write(&path, cookie).expect("write the Erlang cookie");
            // Erlang refuses a cookie file others can read.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
                .expect("cookie permissions");
        }
        RabbitMq {
            port: free_port(),
            dist_port: free_port(),
            epmd_port: cluster.map_or_else(free_port, |(_, p)| p),
            nodename: format!("{unique}@localhost"),
            sbin: sbin_dir(),
            dir,
            child: None,
        }
    }

    /// The AMQP URL of the broker (user `guest`, which may log in from loopback only,
    /// and the default vhost `/`, spelled `%2f`: an empty path is the vhost "").
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The broker's Erlang node name, `<unique>@localhost`.
    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.nodename)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d.join("broker.pid"))
            // A crash dump lands with the broker's files, not in the caller's folder.
            .env("ERL_CRASH_DUMP", d.join("erl_crash.dump"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "+sbwt none +sbwtdcpu none +sbwtdio none",
            )
            // The script then execs the VM instead of waiting on it from a shell.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env_remove("RABBITMQ_ALLOW_INPUT");
    }

    /// A first start: ports come from [`free_port`], which only finds a port free a
    /// moment ago, and busy machines hand it to some outgoing connection or another
    /// test's listener in between (`dist_port_already_used`, `eaddrinuse`, or the
    /// port answering while `await_startup` finds no broker). Then new ports are drawn and the start
    /// is tried again, at most three times. Restarts keep their ports (proxies and
    /// clients point at them) and fail loudly instead.
    fn spawn_fresh(&mut self) {
        for _ in 0..2 {
            match self.try_spawn() {
                Ok(()) => return,
                Err(out)
                    if out.contains("already_used")
                        || out.contains("eaddrinuse")
                        || out.starts_with(AWAIT_FAILED) =>
                {
                    tracing::warn!(port = self.port, "rabbitmq port taken; trying other ports");
                    self.port = free_port();
                    self.dist_port = free_port();
                }
                Err(out) => panic!("rabbitmq-server did not start; its output:\n{out}"),
            }
        }
        self.spawn();
    }

    fn spawn(&mut self) {
        if let Err(out) = self.try_spawn() {
            panic!("rabbitmq-server did not start; its output:\n{out}");
        }
    }

    /// Starts the server; `Err` with its output when it exits during start-up, or when
    /// its port answers but `await_startup` finds no broker (then it is stopped).
    fn try_spawn(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let server = self.sbin.join("rabbitmq-server");
        let mut cmd = Command::new(&server);
        self.env(&mut cmd);
        let log =
            std::fs::File::create(self.dir.path().join("server.out")).expect("server output file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): install RabbitMQ with `apt-get install rabbitmq-server` or run ./test.sh",
                    server.display()
                )
            });
        self.child = Some(child);
        // The port first (cheap to poll), then the CLI's own readiness check.
        let deadline = started + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("({status}) {}", self.server_output()));
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not open port {} within 60 s; its output:\n{}",
                self.port,
                self.server_output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.ctl(&["-q", "await_startup", "--timeout", "60"]);
        if !out.status.success() {
            // The port answered, yet the broker is not up: most often another process
            // took the port between `free_port` and the broker's bind, so the port
            // answered for it. Stopped here, so that a fresh start can draw new ports.
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            return Err(format!(
                "{AWAIT_FAILED}: {}{}\nserver output:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.server_output()
            ));
        }
        tracing::debug!(
            port = self.port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rabbitmq ready"
        );
        Ok(())
    }

    fn server_output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default()
    }

    /// Runs `rabbitmqctl` (from the same `sbin` folder, with the broker's environment).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(self.sbin.join("rabbitmqctl"));
        self.env(&mut cmd);
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run rabbitmqctl")
    }

    /// Like [`RabbitMq::ctl`], panicking unless it succeeds; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the broker process is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A clean shutdown (`rabbitmqctl stop`), waiting for the process to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self.ctl(&["-q", "stop"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGKILL to the broker's VM: no shutdown, connections cut at once.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // The script exec'd the VM, so the child is the beam process; the pid file
        // (written by the VM itself) is checked too, should a wrapper ever remain.
        let pid_file = self.pid();
        let _ = child.kill();
        let _ = child.wait();
        if let Some(pid) = pid_file.filter(|&p| p != child.id()) {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The broker VM's process id (from the pid file the VM writes itself).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("broker.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// SIGSTOP to the VM: connections stay open but nothing answers (a hung broker).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RabbitMq::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("the broker's pid file");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Starts the broker again on the same data directory and ports (stopping it
    /// first if it runs). Durable queues and persistent messages are still there.
    pub fn restart(&mut self) {
        if self.running() {
            self.stop();
        }
        self.child = None;
        self.spawn();
    }

    /// Starts a broker that was stopped or killed, on the same data and ports.
    pub fn start_again(&mut self) {
        assert!(!self.running(), "the broker is still running");
        self.spawn();
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        if self.running() {
            // A frozen VM ignores nothing but SIGKILL; thaw is harmless otherwise.
            if let Some(pid) = self.pid() {
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
            // A clean stop takes ~2 s; tests that end do not need the data, so kill.
            self.kill();
        }
        self.child = None;
        let _ = Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
