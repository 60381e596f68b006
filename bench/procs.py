"""Processes under test: free ports, pinned start-up, readiness, RSS, clean stop."""

import atexit
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Every process the harness starts, so that an interrupted run leaves nothing behind.
_RUNNING = []


def raise_nofile():
    """Raise the open-file limit to the hard limit, for us and every child we start
    (the 10,000-stream test needs one descriptor per connection)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port():
    """A port the kernel considers free right now (bound to 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd, cpus):
    """Prefixes `cmd` with taskset when a CPU list is given ("0", "1", "0,1")."""
    if cpus in (None, "", "all"):
        return cmd
    return ["taskset", "-c", str(cpus)] + cmd


def wait_port(port, timeout=15.0, proc=None):
    """Waits until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


class Proc:
    """One started process. `stop()` is idempotent and also runs at exit."""

    def __init__(self, name, cmd, env=None, log_path=None, stdout=None):
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self.log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            cmd,
            env=full_env,
            stdout=stdout if stdout is not None else self.log,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _RUNNING.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def poll(self):
        return self.popen.poll()

    def stop(self, timeout=5.0):
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.log not in (None, subprocess.DEVNULL):
            self.log.close()


def stop_all():
    for p in list(reversed(_RUNNING)):
        try:
            p.stop(timeout=3.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(stop_all)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def status_kib(pid, field):
    """A KiB figure of a process from /proc/PID/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def rss_kib(pid):
    """Resident set size of a process in KiB (VmRSS from /proc)."""
    return status_kib(pid, "VmRSS")


def read_to_end(sock):
    """Every byte the peer sends until it closes."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def child_pids(pid):
    """Direct children of a process (nginx workers under the master)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The comm field may contain spaces; the ppid follows the closing paren.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return out


def fill_template(path, out_path, values):
    text = open(path).read()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{[A-Z0-9_]+\}\}", text)
    if left:
        raise RuntimeError(f"{path}: unfilled placeholders {left}")
    with open(out_path, "w") as f:
        f.write(text)


def start_nginx(name, template, workdir, values, cpus):
    """Starts nginx from a template in bench/nginx; returns (Proc, conf path)."""
    values = dict(values)
    values["DIR"] = workdir
    conf = os.path.join(workdir, f"{name}.conf")
    fill_template(os.path.join(HERE, "nginx", template), conf, values)
    cmd = pinned([shutil.which("nginx") or "/usr/sbin/nginx", "-p", workdir, "-e",
                  os.path.join(workdir, f"{name}.stderr.log"), "-c", conf], cpus)
    return Proc(name, cmd, log_path=os.path.join(workdir, f"{name}.log")), conf


def start_strait(binary, workdir, name, listen_port, admin_port, upstream, cpus, extra_args=(),
                 config_file=None, client_key="c1", upstream_key="k1", workers=1, access_log=None):
    """Starts strait-node with one worker (`workers=None`: its default, one per core),
    managed keys (client-key auth), metrics on the admin listener and the access log
    off (`access_log=PATH`: on, its default text line to that file); `extra_args` pass
    through (--strait-arg)."""
    cmd = [binary, "--listen", f"127.0.0.1:{listen_port}", "--admin-listen", f"127.0.0.1:{admin_port}",
           "--log-level", "warn"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    # JSON process logs as before; with the access log on, its default format (text).
    cmd += ["--no-access-log", "--log-format", "json"] if access_log is None else ["--access-log-file", access_log]
    if upstream:
        cmd += ["--upstream", upstream]
    if config_file:
        cmd += ["--config", config_file]
    # Each node its own state directory (the deferred spool in it is one process's).
    cmd += ["--state-dir", os.path.join(workdir, f"{name}-state")]
    cmd += list(extra_args)
    env = {"STRAIT_UPSTREAM_KEYS": upstream_key, "STRAIT_CLIENT_KEYS": client_key}
    return Proc(name, pinned(cmd, cpus), env=env, log_path=os.path.join(workdir, f"{name}.log"))


def start_mock(binary, workdir, name, cpus, ttft_ms, interval_ms, tokens, tls=False):
    """Starts strait-mock-upstream and returns (Proc, url, ca path or None)."""
    port = free_port()
    cmd = [binary, "--listen", f"127.0.0.1:{port}", "--ttft-ms", str(ttft_ms), "--token-interval-ms",
           str(interval_ms), "--tokens", str(tokens), "--no-record", "--workers", "1"]
    ca = None
    if tls:
        ca = os.path.join(workdir, f"{name}-ca.pem")
        cmd += ["--tls", "--ca-out", ca]
    proc = Proc(name, pinned(cmd, cpus), log_path=os.path.join(workdir, f"{name}.log"))
    wait_port(port, proc=proc.popen)
    scheme = "https" if tls else "http"
    # The mock's certificate names localhost and 127.0.0.1.
    return proc, f"{scheme}://127.0.0.1:{port}", ca


def http_get(port, path, timeout=5.0):
    """A tiny blocking HTTP/1.1 GET (for /metrics), returns (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = read_to_end(s)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def http_post(port, path, body, headers, timeout=5.0):
    """A tiny blocking HTTP/1.1 POST, returns (status, body)."""
    hdrs = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n{hdrs}"
           f"content-length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        data = read_to_end(s)
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        rest = _dechunk(rest)
    return status, rest


def _dechunk(data):
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out


def metric_value(text, name, labels=None):
    """Sums a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        if labels and not all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            continue
        total += float(m.group(3))
    return total


def tool_version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def machine_info():
    info = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kib"] = int(f.readline().split()[1])
    except OSError:
        pass
    info["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    return info


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def dump_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
