"""A real single-node Apache Kafka for development and tests (`hitl-connector dev-kafka`).

Owns: finding the Kafka jars (``deploy/kafka/lib`` resolved with Maven from
``deploy/kafka/pom.xml`` and cached by the pom's hash, else ``$KAFKA_HOME/libs``), finding
Java >= 17, writing ``server.properties`` for one combined KRaft broker/controller, formatting
the storage once, running the JVM with a capped heap, waiting until the broker answers a
metadata request, stopping it (SIGTERM, then SIGKILL after a deadline), and the faults chaos
tests inject (``kill``/``pause``/``resume``, restart on the same data dir). Optionally more
listeners (``ExtraListener``: SSL, SASL_SSL, ... with an advertised port that may differ from
the bound one, so a TCP proxy can sit in front) and SCRAM users created when the storage is
formatted (``ScramUser``); TLS key material comes in as PEM files via ``extra_properties``.

Not owned here: topics and client settings (``connector.kafka``), production clusters.
The Kafka version is pinned in ``deploy/kafka/pom.xml`` only.

Data dir layout: ``server.properties``, ``kraft/`` (log.dirs, holds ``meta.properties``),
``broker.log`` (the JVM's stdout and stderr, appended across restarts).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from connector.errors import KafkaSetupError

if TYPE_CHECKING:
    from connector.devcluster import DevCluster

REPO_ROOT = Path(__file__).resolve().parent.parent


def _deploy_dir() -> Path:
    """``deploy/kafka`` in a checkout; else (an installed package) a cache directory seeded
    with the pom and log4j config packaged in ``connector/_devkafka``."""
    checkout = REPO_ROOT / "deploy" / "kafka"
    if (checkout / "pom.xml").is_file():
        return checkout
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = cache / "hitl-connector" / "kafka"
    packaged = Path(__file__).resolve().parent / "_devkafka"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("pom.xml", "log4j2.properties"):
        source = packaged / name
        if source.is_file() and (
            not (target / name).is_file() or (target / name).read_bytes() != source.read_bytes()
        ):
            shutil.copyfile(source, target / name)
    return target


DEPLOY_DIR = _deploy_dir()
MIN_JAVA = 17
DEFAULT_HEAP = "512m"
DEFAULT_START_TIMEOUT = 120.0
DEFAULT_STOP_TIMEOUT = 30.0
_STAMP = ".resolved"
_INSTALL_HINT = (
    f"install Maven (apt-get install maven) so {DEPLOY_DIR / 'pom.xml'} can be resolved, "
    "or set KAFKA_HOME to an unpacked Apache Kafka 4.x distribution"
)

# Single node: every internal topic must live with one replica. Fewer internal partitions
# than the defaults (50) make the first consumer group and transaction noticeably faster.
_BASE_PROPERTIES: dict[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "10",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    # Deterministic tests: topics exist only when someone created them on purpose.
    "auto.create.topics.enable": "false",
    # After a SIGKILL the controller refuses the new incarnation (DUPLICATE_BROKER_REGISTRATION)
    # until the old one's session expires (default 9 s); shorter keeps crash tests quick.
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "1000",
    # Abandoned transactions (e.g. a killed producer in chaos tests) are aborted sooner.
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
}


class DevKafkaError(KafkaSetupError):
    """The development broker cannot be installed, started or stopped; the message says why."""


ListenerProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
ScramMechanism = Literal["SCRAM-SHA-256", "SCRAM-SHA-512"]
_RESERVED_LISTENERS = frozenset({"PLAINTEXT", "CONTROLLER"})


@dataclass
class ExtraListener:
    """One more broker listener besides ``PLAINTEXT`` (clients) and ``CONTROLLER``.

    ``port=0`` picks a free port at the first start. ``advertised_port``: ``None`` advertises
    the bound port; ``0`` picks a different free port to advertise (a TCP proxy listens there
    and forwards to the bound port); any other value is advertised as given. Chosen ports are
    kept across restarts. For ``SSL``/``SASL_SSL`` the broker needs ``ssl.keystore.*`` in
    ``extra_properties``; for ``SASL_*`` DevKafka enables SCRAM (see ``ScramUser``).
    """

    name: str
    protocol: ListenerProtocol
    port: int = 0
    advertised_port: int | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", self.name):
            raise DevKafkaError(f"listener name {self.name!r}: use A-Z, 0-9 and _ only")
        if self.name in _RESERVED_LISTENERS:
            raise DevKafkaError(f"listener name {self.name} is taken by DevKafka itself")


@dataclass(frozen=True)
class ScramUser:
    """A SCRAM credential written into the cluster metadata when the storage is formatted
    (``kafka-storage format --add-scram``); a data dir formatted earlier keeps its users."""

    name: str
    password: str = field(repr=False)
    mechanism: ScramMechanism = "SCRAM-SHA-256"

    def __post_init__(self) -> None:
        # The format tool parses "name=...,password=..." inside [...]: keep values plain.
        for value in (self.name, self.password):
            if not value or any(c in value for c in ',[]="'):
                raise DevKafkaError('SCRAM user names and passwords must not contain ,[]="')

    def format_argument(self) -> str:
        return f"{self.mechanism}=[name={self.name},password={self.password}]"


@dataclass(frozen=True)
class KafkaDistribution:
    """Where the Kafka jars come from: ``lib_dir`` holds them all (classpath ``lib_dir/*``)."""

    lib_dir: Path
    source: Literal["maven", "kafka_home"]
    log4j_config: Path | None

    @property
    def classpath(self) -> str:
        return str(self.lib_dir / "*")


# --- discovery ----------------------------------------------------------------------------


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def _resolved_lib(deploy_dir: Path) -> Path | None:
    """``deploy_dir/lib`` if it was resolved from the current pom (stamp matches)."""
    lib, pom = deploy_dir / "lib", deploy_dir / "pom.xml"
    stamp = lib / _STAMP
    if pom.is_file() and stamp.is_file() and stamp.read_text().strip() == _pom_digest(pom):
        return lib
    return None


def _maven_resolve(mvn: str, deploy_dir: Path) -> Path:
    """Resolve the pom into ``deploy_dir/lib`` atomically (temp dir, then rename)."""
    pom, lib = deploy_dir / "pom.xml", deploy_dir / "lib"
    # The pom itself is the lock: concurrent test runs resolve once, the others wait.
    with pom.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cached := _resolved_lib(deploy_dir)) is not None:
            return cached
        tmp = deploy_dir / f"lib.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(pom)]
        cmd += ["dependency:copy-dependencies", f"-Dkafka.lib.dir={tmp}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise DevKafkaError(
                f"Maven could not resolve {pom} (exit {done.returncode}); check network access "
                f"to Maven Central and ~/.m2/settings.xml. Last output:\n{tail}"
            )
        (tmp / _STAMP).write_text(_pom_digest(pom) + "\n")
        shutil.rmtree(lib, ignore_errors=True)
        tmp.rename(lib)
        return lib


def _kafka_home_libs(kafka_home: str) -> Path:
    libs = Path(kafka_home) / "libs"
    jars = sorted(libs.glob("kafka_2.*-*.jar")) if libs.is_dir() else []
    if not jars:
        raise DevKafkaError(
            f"KAFKA_HOME={kafka_home} has no libs/kafka_2.*.jar; point it at an unpacked "
            f"Apache Kafka 4.x distribution, or {_INSTALL_HINT}"
        )
    match = re.search(r"kafka_2\.\d+-(\d+)\.", jars[0].name)
    if match and int(match.group(1)) < 4:
        raise DevKafkaError(f"KAFKA_HOME has {jars[0].name}; Kafka 4.x is required")
    return libs


def resolve_distribution(
    *, deploy_dir: Path = DEPLOY_DIR, env: Mapping[str, str] | None = None
) -> KafkaDistribution:
    """Find the Kafka jars, resolving them with Maven when needed.

    Order: 1. ``deploy_dir/lib`` already resolved from the current pom; 2. resolve it with
    ``mvn`` if on PATH (~15 s with a warm ~/.m2); 3. ``$KAFKA_HOME/libs``; else an error
    naming what to install.
    """
    env = os.environ if env is None else env
    log4j = deploy_dir / "log4j2.properties"
    log4j_config = log4j if log4j.is_file() else None
    if (lib := _resolved_lib(deploy_dir)) is not None:
        return KafkaDistribution(lib, "maven", log4j_config)
    mvn = shutil.which("mvn", path=env.get("PATH", ""))
    if mvn is not None and (deploy_dir / "pom.xml").is_file():
        return KafkaDistribution(_maven_resolve(mvn, deploy_dir), "maven", log4j_config)
    if kafka_home := env.get("KAFKA_HOME"):
        libs = _kafka_home_libs(kafka_home)
        if log4j_config is None and (Path(kafka_home) / "config" / "log4j2.yaml").is_file():
            log4j_config = Path(kafka_home) / "config" / "log4j2.yaml"
        return KafkaDistribution(libs, "kafka_home", log4j_config)
    raise DevKafkaError(f"No Apache Kafka found: {_INSTALL_HINT}.")


def parse_java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` output (``"17.0.15"`` → 17, ``"1.8.0_402"`` → 8)."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java(env: Mapping[str, str] | None = None) -> str:
    """Path of a Java >= 17 runtime (``$JAVA_HOME/bin/java``, else ``java`` on PATH)."""
    env = os.environ if env is None else env
    java: str | None = None
    if java_home := env.get("JAVA_HOME"):
        candidate = Path(java_home) / "bin" / "java"
        java = str(candidate) if candidate.is_file() else None
    java = java or shutil.which("java", path=env.get("PATH", ""))
    hint = "install a JRE (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    if java is None:
        raise DevKafkaError(f"No Java runtime found; Kafka needs Java {MIN_JAVA}+: {hint}")
    out = subprocess.run(  # noqa: S603
        [java, "-version"], capture_output=True, text=True, check=False, timeout=60
    )
    major = parse_java_major(out.stderr + out.stdout)
    if major is None or major < MIN_JAVA:
        raise DevKafkaError(
            f"{java} is Java {major or 'of unknown version'}; Kafka 4 needs Java {MIN_JAVA}+: "
            f"{hint}"
        )
    return java


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def new_cluster_id() -> str:
    """A KRaft cluster id: 22 chars of base64url, never starting with ``-`` (read as a flag)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# --- the broker ---------------------------------------------------------------------------

_running: set[DevKafka] = set()


@atexit.register
def _kill_leftovers() -> None:
    # A failed test session must not leave a JVM behind holding ports and memory.
    for broker in list(_running):
        broker.kill()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making Linux SIGKILL the JVM when its parent dies, even by SIGKILL or
    an unhandled SIGTERM (CI timeouts), where ``atexit`` never runs. "Parent" is the thread
    that spawned it, so ``DevKafka`` spawns from the event loop's thread, never a worker.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return set_parent_death_signal


class DevKafka:
    """One combined KRaft broker/controller JVM on ``host:port`` with its data in ``data_dir``.

    ``start()`` formats the storage if needed, starts the JVM and returns once the broker
    serves metadata; ``stop()`` stops it cleanly (idempotent). Ports chosen with ``port=0``
    are kept, so ``start()`` after ``stop()``/``kill()`` restarts the same broker and data.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int = 0,
        controller_port: int = 0,
        host: str = "127.0.0.1",
        heap: str = DEFAULT_HEAP,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        extra_properties: Mapping[str, str] | None = None,
        distribution: KafkaDistribution | None = None,
        extra_listeners: Sequence[ExtraListener] = (),
        scram_users: Sequence[ScramUser] = (),
        node_id: int = 1,
        quorum_voters: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        # A member of a cluster (``connector.devcluster``): its id, every controller
        # ("id@host:port,..."), and the cluster id all members format their storage with.
        self.node_id = node_id
        self.quorum_voters = quorum_voters
        self.cluster_id = cluster_id
        self.host = host
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_properties = dict(extra_properties or {})
        # Copies: the chosen ports are written into them at the first start.
        self.extra_listeners = [
            ExtraListener(x.name, x.protocol, x.port, x.advertised_port) for x in extra_listeners
        ]
        names = [x.name for x in self.extra_listeners]
        if len(set(names)) != len(names):
            raise DevKafkaError(f"listener names must be unique, got {', '.join(names)}")
        self.scram_users = list(scram_users)
        self._distribution = distribution
        self._java: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def listener(self, name: str) -> ExtraListener:
        """The extra listener ``name`` (its ports are set once the broker was started)."""
        for listener in self.extra_listeners:
            if listener.name == name:
                return listener
        raise DevKafkaError(f"no listener {name!r}; have {[x.name for x in self.extra_listeners]}")

    def listener_address(self, name: str) -> str:
        """``host:port`` clients bootstrap from for listener ``name`` (the advertised port)."""
        listener = self.listener(name)
        if not listener.port:
            raise DevKafkaError(f"listener {name} has no port yet: start() the broker first")
        return f"{self.host}:{listener.advertised_port or listener.port}"

    def listener_bound_address(self, name: str) -> str:
        """``host:port`` the broker itself listens on for listener ``name``."""
        listener = self.listener(name)
        if not listener.port:
            raise DevKafkaError(f"listener {name} has no port yet: start() the broker first")
        return f"{self.host}:{listener.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def __aenter__(self) -> DevKafka:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the broker (formatting new storage) and wait until it serves metadata."""
        if self.running:
            return
        await asyncio.to_thread(self._prepare)
        self._spawn()
        try:
            await self._wait_ready()
        except BaseException:
            self.kill()
            raise

    async def stop(self) -> None:
        """SIGTERM, wait up to ``stop_timeout``, then SIGKILL. Safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
                proc.terminate()
            deadline = time.monotonic() + self.stop_timeout
            # Polling: a Popen child has no awaitable exit, and Popen keeps kill() synchronous.
            while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the JVM now (a crash: no controlled shutdown) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=30)
        self._proc = None
        _running.discard(self)

    def pause(self) -> None:
        """SIGSTOP the JVM: connections stay open but nothing answers (a hung broker)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused JVM."""
        self._signal(signal.SIGCONT)

    async def restart(self) -> None:
        """Clean stop, then start again on the same ports and data."""
        await self.stop()
        await self.start()

    async def wait(self) -> int:
        """Wait until the JVM exits on its own (or is stopped); its exit code."""
        proc = self._proc
        if proc is None:
            return 0
        while (code := proc.poll()) is None:  # noqa: ASYNC110 - see stop()
            await asyncio.sleep(0.2)
        return code

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of ``broker.log`` (for error messages)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, signum: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise DevKafkaError(f"the broker is not running; cannot send {signum.name}")
        self._proc.send_signal(signum)

    def _prepare(self) -> None:
        """Blocking set-up (run in a thread): jars, java, ports, properties, format."""
        if self._distribution is None:
            self._distribution = resolve_distribution()
        self._java = self._java or find_java()
        self._choose_ports()
        (self.data_dir / "kraft").mkdir(parents=True, exist_ok=True)
        self._properties_path().write_text(self._render_properties())
        if not (self.data_dir / "kraft" / "meta.properties").is_file():
            self._format()

    def _choose_ports(self) -> None:
        """Free ports for every port still 0; chosen once, kept across restarts."""
        self.port = self.port or free_port(self.host)
        self.controller_port = self.controller_port or free_port(self.host)
        for listener in self.extra_listeners:
            listener.port = listener.port or free_port(self.host)
            if listener.advertised_port == 0:
                listener.advertised_port = free_port(self.host)

    def _properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    def _render_properties(self) -> str:
        props = dict(_BASE_PROPERTIES)
        extra = self.extra_listeners
        listeners = [f"PLAINTEXT://{self.host}:{self.port}"]
        listeners += [f"{x.name}://{self.host}:{x.port}" for x in extra]
        advertised = [f"PLAINTEXT://{self.host}:{self.port}"]
        advertised += [f"{x.name}://{self.host}:{x.advertised_port or x.port}" for x in extra]
        protocol_map = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        protocol_map += [f"{x.name}:{x.protocol}" for x in extra]
        props |= {
            # Static quorum: the controller port may change between restarts of the data dir.
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.quorum_voters
            or f"{self.node_id}@{self.host}:{self.controller_port}",
            "listeners": ",".join([*listeners, f"CONTROLLER://{self.host}:{self.controller_port}"]),
            "advertised.listeners": ",".join(advertised),
            "listener.security.protocol.map": ",".join(protocol_map),
            "log.dirs": str(self.data_dir / "kraft"),
        }
        props |= self._sasl_properties()
        props |= self.extra_properties
        lines = ["# Written by connector/devkafka.py on every start; edits are overwritten."]
        return "\n".join([*lines, *(f"{k}={v}" for k, v in props.items())]) + "\n"

    def _sasl_properties(self) -> dict[str, str]:
        """SCRAM on every SASL listener, for the mechanisms of ``scram_users`` (default
        SCRAM-SHA-256); ``extra_properties`` may override any of it."""
        sasl = [x for x in self.extra_listeners if x.protocol.startswith("SASL_")]
        if not sasl:
            return {}
        mechanisms = sorted({u.mechanism for u in self.scram_users} or {"SCRAM-SHA-256"})
        module = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        props = {"sasl.enabled.mechanisms": ",".join(mechanisms)}
        for listener in sasl:
            for mechanism in mechanisms:
                key = f"listener.name.{listener.name.lower()}.{mechanism.lower()}.sasl.jaas.config"
                props[key] = module
        return props

    def _java_command(self, main_class: str, *args: str, heap: str | None = None) -> list[str]:
        dist = self._distribution
        assert dist is not None and self._java is not None
        cmd = [self._java, "-Djava.awt.headless=true", "-XX:+ExitOnOutOfMemoryError"]
        if heap:
            cmd.append(f"-Xmx{heap}")
        if dist.log4j_config is not None:
            cmd.append(f"-Dlog4j2.configurationFile={dist.log4j_config}")
        return [*cmd, "-cp", dist.classpath, main_class, *args]

    def _format(self) -> None:
        cmd = self._java_command(
            "kafka.tools.StorageTool",
            *("format", "-t", self.cluster_id or new_cluster_id()),
            *("-c", str(self._properties_path())),
            *(arg for user in self.scram_users for arg in ("--add-scram", user.format_argument())),
            heap="256m",
        )
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            output = (done.stdout + done.stderr)[-3000:]
            for user in self.scram_users:  # never echo a password into logs
                output = output.replace(user.password, "***")
            raise DevKafkaError(
                f"formatting {self.data_dir / 'kraft'} failed (exit {done.returncode}):\n{output}"
            )

    def _spawn(self) -> None:
        cmd = self._java_command("kafka.Kafka", str(self._properties_path()), heap=self.heap)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== devkafka start {time.strftime('%F %T')} ====\n".encode())
            log.flush()
            # Own session: Ctrl-C in a terminal reaches us, and we stop the JVM in order.
            self._proc = subprocess.Popen(  # noqa: S603
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # takes no lock in the child (see there)
            )
        _running.add(self)

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else "killed"
                raise DevKafkaError(
                    f"Kafka exited during start (exit {code}); last lines of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if await self._answers_metadata():
                return
            await asyncio.sleep(0.25)
        raise DevKafkaError(
            f"Kafka did not become ready on {self.bootstrap_servers} within "
            f"{self.start_timeout:.0f}s; last lines of {self.log_path}:\n{self.log_tail()}"
        )

    async def _answers_metadata(self) -> bool:
        """True when the port accepts connections and a metadata request lists the broker."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
        )
        try:
            await asyncio.wait_for(admin.start(), 10)
            cluster = await asyncio.wait_for(admin.describe_cluster(), 10)
        except (KafkaError, OSError, TimeoutError):
            return False
        finally:
            await admin.close()
        return bool(cluster.get("brokers"))


# --- command line -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``hitl-connector dev-kafka``."""
    parser.add_argument("--port", type=int, default=9092, help="broker port (0: any free)")
    parser.add_argument("--controller-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1", help="listen and advertise address")
    parser.add_argument("--data-dir", type=Path, default=Path("var/kafka"), help="storage")
    parser.add_argument("--heap", default=None, help=f"JVM max heap (-Xmx; {DEFAULT_HEAP})")
    parser.add_argument(
        "--brokers",
        type=int,
        default=1,
        help="N > 1: an N-broker KRaft cluster on ports --port, --port+1, ... "
        "(replication factor min(N, 3), min.insync.replicas RF-1; data in --data-dir/node-<id>)",
    )
    parser.add_argument(
        "--resolve-only",
        action="store_true",
        help="only install/find the Kafka jars and Java, then exit",
    )


async def _serve(broker: DevKafka | DevCluster) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    started = time.monotonic()
    await broker.start()
    print(
        f"Kafka ready on {broker.bootstrap_servers} in {time.monotonic() - started:.1f}s "
        f"(data {broker.data_dir}, log "
        f"{broker.log_path if isinstance(broker, DevKafka) else 'node-*/broker.log'}); "
        "Ctrl-C or SIGTERM stops it.",
        flush=True,
    )
    stopped = asyncio.create_task(stop.wait())
    nodes = broker.nodes if not isinstance(broker, DevKafka) else [broker]
    exited = asyncio.create_task(_first_exit(nodes))
    await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    exited.cancel()
    if not stop.is_set():
        tail = broker.log_tail() if isinstance(broker, DevKafka) else "(see node-*/broker.log)"
        print(f"Kafka exited unexpectedly; last lines:\n{tail}", file=sys.stderr)
        await broker.stop()
        return 1
    print("stopping Kafka ...", flush=True)
    await broker.stop()
    print("Kafka stopped.", flush=True)
    return 0


async def _first_exit(nodes: Sequence[DevKafka]) -> None:
    waits = [asyncio.create_task(node.wait()) for node in nodes]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``dev-kafka`` in the foreground until SIGINT/SIGTERM; the process exit code."""
    try:
        if args.resolve_only:
            dist = resolve_distribution()
            java = find_java()
            print(f"Kafka jars: {dist.lib_dir} (from {dist.source}); Java: {java}")
            return 0
        if args.brokers > 1:
            from connector.devcluster import CLUSTER_HEAP, DevCluster

            cluster = DevCluster(
                args.data_dir,
                brokers=args.brokers,
                host=args.host,
                base_port=args.port,
                heap=args.heap or CLUSTER_HEAP,
            )
            return asyncio.run(_serve(cluster))
        broker = DevKafka(
            args.data_dir,
            port=args.port,
            controller_port=args.controller_port,
            host=args.host,
            heap=args.heap or DEFAULT_HEAP,
        )
        return asyncio.run(_serve(broker))
    except DevKafkaError as exc:
        print(f"dev-kafka: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connector.devkafka", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
