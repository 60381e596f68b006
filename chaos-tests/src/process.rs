//! Runs a binary under test as a child process: its output is captured for assertions
//! (e.g. "no key in the logs") and start-up waits for the line that says it is ready.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A running child with its stdout and stderr collected line by line.
pub struct Captured {
    pub child: Child,
    log: Arc<Mutex<String>>,
    /// One message from each reader when its stream ends.
    ended: Mutex<mpsc::Receiver<()>>,
}

/// A test that panics (or forgets) must not leave its process running: dropping the
/// handle kills the child (a no-op when it has already exited).
impl Drop for Captured {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Captured {
    /// Spawns `cmd` with piped output and waits up to `limit` for a line containing
    /// `ready`, which is returned. Panics with the output so far if the process exits
    /// first or the time runs out: a test that cannot start its process must fail loudly.
    pub fn spawn_until(cmd: &mut Command, ready: &str, limit: Duration) -> (Captured, String) {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel();
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for stream in streams {
            let (log, tx, ready) = (log.clone(), tx.clone(), ready.to_string());
            let ended_tx = ended_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains(&ready) {
                        let _ = tx.send(line.clone());
                    }
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
                let _ = ended_tx.send(());
            });
        }
        let mut captured = Captured {
            child,
            log,
            ended: Mutex::new(ended),
        };
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                return (captured, line);
            }
            if let Ok(Some(status)) = captured.child.try_wait() {
                panic!("{program} exited early ({status}): {}", captured.log());
            }
            assert!(
                Instant::now() < deadline,
                "{program} did not start within {limit:?}: {}",
                captured.log()
            );
        }
    }

    /// Everything the process has printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After the process exited: waits (up to `limit`) until both output streams have
    /// been read to their end, so [`Captured::log`] holds its last lines too. The
    /// readers run on their own threads, a moment behind the process.
    pub fn wait_for_output(&self, limit: Duration) {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = Instant::now() + limit;
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            if ended.recv_timeout(left).is_err() {
                return;
            }
        }
    }
}
