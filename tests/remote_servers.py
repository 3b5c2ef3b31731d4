"""Real servers for the remote-store tests, each on a free loopback port,
started by the test that needs it and stopped after.

* :func:`run_nginx`: nginx serving WebDAV locations (the Bazel HTTP cache
  layout as the docs configure it), plus locations that refuse in each way
  a store must understand (auth, read-only, body too large, 500).
* :func:`run_redis`: ``redis-server`` without persistence, optionally with
  ``requirepass`` and ``maxmemory``.
* :func:`run_moto`: moto's S3 in server mode (``python -m moto.server``), a
  separate process that boto3 talks to exactly as to AWS; with
  ``authenticate=True`` it checks credentials (unknown keys are refused).

Tests make module-scoped fixtures of them (``test_remote_stores.py``
shows how), and :func:`use_fake_aws` gives a test fake AWS credentials and
shuts out the machine's own AWS configuration (and the instance metadata
service: nothing leaves loopback).

A missing server binary skips the test with the reason and the package that
provides it (``.ci/run`` installs them all, so nothing skips in CI); a
server that is installed but fails to start is an error, with its log.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60.0  # moto imports for seconds on a loaded machine
STOP_TIMEOUT = 10.0
TOKEN = "test-token-0123456789abcdef"
USER, PASSWORD = "builder", "basic-pass-0123456789"
BUCKET = "safecache-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_port() -> int:
    """A loopback port where nothing listens (connections are refused)."""
    return free_port()


def _wait_until_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> bool:
    """True once ``port`` accepts; False if the process exited (a port taken
    between free_port() and its bind, or a real failure: the caller reads
    the log)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    _stop(process)
    raise RuntimeError(f"server on port {port} did not listen within {START_TIMEOUT} s:\n{_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


def _tail(log: Path) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return "(no log)"


@contextmanager
def _serve(
    name: str, workdir: Path, command: Callable[[int], list[str]], env: dict[str, str] | None = None
) -> Iterator[int]:
    """Start ``command(port)`` until one port works (three tries: another
    test may take a free port before the server binds it); yield the port."""
    log = workdir / f"{name}.log"
    for _ in range(3):
        port = free_port()
        with open(log, "ab") as out:
            process = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        try:
            if _wait_until_listening(port, process, log):
                yield port
                return
        finally:
            _stop(process)
        if "in use" not in _tail(log):
            break
    raise RuntimeError(f"{name} did not start:\n{_tail(log)}")


def _binary(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install {package}; .ci/run installs it)")
    return path


# -- nginx ------------------------------------------------------------------------------------
@dataclass
class Nginx:
    port: int
    root: Path
    tls_port: int | None  # None without openssl to make a certificate
    certificate: Path  # self-signed for 127.0.0.1: trust it with SSL_CERT_FILE

    def url(self, location: str = "cache", *, tls: bool = False) -> str:
        """``/cache`` is open, ``/basic`` wants USER/PASSWORD, ``/token``
        wants ``Bearer TOKEN``, ``/readonly`` allows no PUT, ``/small``
        takes bodies up to 1 KiB, ``/broken`` answers 500; the same over
        TLS with ``tls=True``."""
        if tls:
            if self.tls_port is None:
                pytest.skip("openssl is not installed: no certificate for the TLS server (apt-get install openssl)")
            return f"https://127.0.0.1:{self.tls_port}/{location}"
        return f"http://127.0.0.1:{self.port}/{location}"


def _nginx_conf(workdir: Path, root: Path, port: int, tls_port: int | None) -> str:
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {kind}_temp_path {workdir / kind};" for kind in kinds)
    dav = "dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 200m;"
    tls = ""
    if tls_port is not None:
        tls = f"""
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {workdir / "cert.pem"};
        ssl_certificate_key {workdir / "key.pem"};"""
    return f"""
daemon off;
master_process off;
pid {workdir / "nginx.pid"};
error_log {workdir / "nginx.log"} info;
events {{ worker_connections 256; }}
http {{
{temp}
    access_log off;
    keepalive_timeout 30s;
    server {{
        listen 127.0.0.1:{port};{tls}
        root {root};
        location /cache/ {{ {dav} }}
        location /basic/ {{ {dav} auth_basic "cache"; auth_basic_user_file {workdir / "htpasswd"}; }}
        location /token/ {{
            {dav}
            if ($http_authorization != "Bearer {TOKEN}") {{ return 401; }}
        }}
        location /readonly/ {{ }}
        location /small/ {{ dav_methods PUT DELETE; create_full_put_path on; client_max_body_size 1k; }}
        location /broken/ {{ return 500; }}
    }}
}}
"""


def _self_signed(workdir: Path) -> bool:
    """A certificate and key for 127.0.0.1 in ``workdir``; False without openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(workdir / "key.pem")]
        + ["-out", str(workdir / "cert.pem")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return True


@contextmanager
def run_nginx(workdir: Path) -> Iterator[Nginx]:
    nginx = _binary("nginx", "nginx-light")
    root = workdir / "www"
    for location in ("cache", "basic", "token", "readonly", "small"):
        (root / location).mkdir(parents=True, exist_ok=True)
    (workdir / "htpasswd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    conf = workdir / "nginx.conf"
    tls = _self_signed(workdir)
    ports: dict[int, int | None] = {}

    def command(port: int) -> list[str]:
        ports[port] = free_port() if tls else None
        conf.write_text(_nginx_conf(workdir, root, port, ports[port]))
        return [nginx, "-e", str(workdir / "nginx.log"), "-p", str(workdir), "-c", str(conf)]

    with _serve("nginx", workdir, command) as port:
        yield Nginx(port, root, ports[port], workdir / "cert.pem")


# -- redis --------------------------------------------------------------------------------------
@dataclass
class Redis:
    port: int
    password: str | None

    def url(self, path: str = "") -> str:
        return f"redis://127.0.0.1:{self.port}{path}"


@contextmanager
def run_redis(
    workdir: Path, *, password: str | None = None, maxmemory: str | None = None, replica_of: int | None = None
) -> Iterator[Redis]:
    """``replica_of``: a port; the server is a read-only replica of it
    (a dead port is fine: a replica refuses writes with or without one)."""
    server = _binary("redis-server", "redis-server")

    def command(port: int) -> list[str]:
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(workdir), "--daemonize", "no"]
        if password is not None:
            args += ["--requirepass", password]
        if maxmemory is not None:
            args += ["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return args

    with _serve("redis", workdir, command) as port:
        yield Redis(port, password)


# -- moto (S3) ----------------------------------------------------------------------------------
@dataclass
class Moto:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "/runs", *, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}{prefix}?endpoint_url={self.endpoint}"


@contextmanager
def run_moto(workdir: Path, *, authenticate: bool = False) -> Iterator[Moto]:
    pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")
    env = {**os.environ, **FAKE_AWS}
    if authenticate:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # check every request's credentials against moto's IAM

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

    with _serve("moto", workdir, command, env) as port:
        yield Moto(port)


#: What a test's environment holds for boto3: fake keys, no files, no IMDS.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE0000",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-key-0123456789abcdef",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_MAX_ATTEMPTS")


def create_bucket(moto: Moto, bucket: str = BUCKET) -> None:
    boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'safecache[s3]')")
    client = boto3.session.Session(
        aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).client("s3", endpoint_url=moto.endpoint)
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


# -- a server that answers what it is told ----------------------------------------------------
@contextmanager
def canned_http(response: bytes) -> Iterator[int]:
    """A loopback HTTP "server" that reads each request (headers and a
    Content-Length body) and sends ``response`` as is, for answers no real
    server gives on demand (a redirect, a chunked body, a short body).
    Yields its port."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stopping = threading.Event()

    def serve(conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            buffer = b""
            while b"\r\n\r\n" not in buffer and len(buffer) < 65536:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, _, body = buffer.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    missing = int(line.split(b":")[1]) - len(body)
                    while missing > 0 and (chunk := conn.recv(min(missing, 65536))):
                        missing -= len(chunk)
            conn.sendall(response)
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()


# -- the test's AWS environment ------------------------------------------------------------------
def use_fake_aws(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Give the test fake AWS credentials and shut out the machine's own AWS
    configuration, endpoints and instance metadata (nothing leaves loopback)."""
    for name in _AWS_UNSET:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    return dict(FAKE_AWS)
