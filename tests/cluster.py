"""Three RabbitMQ nodes clustered on loopback, for the node-loss tests.

A thin driver of tests/cluster/rabbit-cluster.sh, which starts rt1..rt3@localhost on
127.0.0.1:5673..5675 with their own configuration, data and Erlang cookie under one
directory, beside the machine's broker on 5672 (which it never touches).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "cluster" / "rabbit-cluster.sh"
NODES = (1, 2, 3)
# Generous: a node boots in 5-9 s here, but the machine is shared.
START_TIMEOUT = 300
STOP_TIMEOUT = 120
CTL_TIMEOUT = 60


class ClusterError(RuntimeError):
    """A rabbit-cluster.sh command failed; the message carries its output."""


class RabbitCluster:
    """Starts, kills, restarts and inspects the three-node test cluster in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()  # the script records absolute paths
        self.started_in: float | None = None  # seconds the last start() took

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> float:
        """Start and cluster the three nodes (cleaning up a crashed run's); seconds taken."""
        self.started_in = self._timed("start", timeout=START_TIMEOUT)
        return self.started_in

    def stop(self) -> None:
        """Stop the three nodes (SIGKILL what does not stop) and remove the directory."""
        self._run("stop", timeout=STOP_TIMEOUT)

    def kill(self, node: int) -> float:
        """SIGKILL node 1, 2 or 3 and wait until its VM is gone; when (monotonic) it was sent.

        Signalled from here rather than through the script's `kill`, so that the time is
        that of the signal itself (the node's launcher exits by itself once its VM is gone).
        """
        pid = self._vm_pid(_checked(node))
        if pid is None:
            raise ClusterError(f"node {self.node_name(node)} is not running")
        sent = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = sent + CTL_TIMEOUT
        while self._vm_pid(node) == pid:  # a dead process's environment reads empty
            if time.monotonic() > deadline:
                raise ClusterError(f"node {self.node_name(node)} survived SIGKILL")
            time.sleep(0.01)
        return sent

    def restart(self, node: int) -> float:
        """Start a killed node again and wait until its app runs; seconds taken."""
        return self._timed("restart", str(_checked(node)), timeout=START_TIMEOUT)

    # -- addresses --------------------------------------------------------------------

    @staticmethod
    def node_name(node: int) -> str:
        return f"rt{_checked(node)}@localhost"

    @staticmethod
    def url(node: int) -> str:
        """The AMQP URL of one node (guest may log in: the client is on loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{5672 + _checked(node)}/%2F"

    def urls(self, first: int = 1) -> list[str]:
        """The three nodes' URLs, starting with node `first` (clients try them in turn)."""
        order = [*NODES[NODES.index(_checked(first)):], *NODES[:NODES.index(first)]]
        return [self.url(node) for node in order]

    def amqp_url(self, first: int = 1) -> str:
        """The comma-separated URL list thelca takes (THELCA_AMQP_URL), node `first` first."""
        return ",".join(self.urls(first))

    # -- inspection -------------------------------------------------------------------

    def running(self) -> list[int]:
        """The nodes whose Erlang VM is alive (whatever the state of their app)."""
        return [node for node in NODES if self._vm_pid(node) is not None]

    def ctl(self, node: int, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """rabbitmqctl -n rtN@localhost ARGS with the cluster's cookie; its stdout."""
        return self._run("ctl", str(_checked(node)), *args, timeout=timeout)

    def queues(self) -> list[dict[str, object]]:
        """Every queue's name, leader, members and online members, asked of a live node."""
        live = self.running()
        if not live:
            raise ClusterError("no node of the cluster is running")
        out = self.ctl(live[0], "list_queues", "name", "leader", "members", "online",
                       "--formatter", "json", "--quiet")
        rows: list[dict[str, object]] = json.loads(out)
        return rows

    def node_of_queue_leader(self, queue: str) -> int | None:
        """The node (1..3) leading a quorum queue, or None if it has no leader right now."""
        for row in self.queues():
            if row["name"] == queue:
                leader = str(row["leader"])
                for node in NODES:
                    if leader == self.node_name(node):
                        return node
                return None
        raise ClusterError(f"no queue {queue!r} in the cluster")

    def online_members(self, queue: str) -> list[int]:
        """The nodes on which a quorum queue's replica is running."""
        for row in self.queues():
            if row["name"] == queue:
                online = row["online"] if isinstance(row["online"], list) else []
                return sorted(n for n in NODES if self.node_name(n) in online)
        raise ClusterError(f"no queue {queue!r} in the cluster")

    def rss_mib(self) -> dict[int, float]:
        """Resident memory of each running node's Erlang VM, in MiB."""
        sizes: dict[int, float] = {}
        for node in NODES:
            pid = self._vm_pid(node)
            if pid is None:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes[node] = int(line.split()[1]) / 1024
        return sizes

    # -- plumbing ---------------------------------------------------------------------

    def _vm_pid(self, node: int) -> int | None:
        # The node writes its pid file early in its boot and removes it when stopped;
        # a SIGKILLed node leaves it behind, hence the check of the process itself.
        pid_file = self.directory / f"rt{node}" / "pid"
        try:
            pid = int(pid_file.read_text().strip())
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except (OSError, ValueError):
            return None
        mine = f"RABBITMQ_PID_FILE={pid_file}".encode()
        return pid if mine in environ.split(b"\0") else None

    def _timed(self, *args: str, timeout: float) -> float:
        began = time.monotonic()
        self._run(*args, timeout=timeout)
        return time.monotonic() - began

    def _run(self, command: str, *args: str, timeout: float) -> str:
        try:
            done = subprocess.run(["bash", str(SCRIPT), command, str(self.directory), *args],
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as error:
            raise ClusterError(f"rabbit-cluster.sh {command} took over {timeout}s") from error
        if done.returncode != 0:
            raise ClusterError(f"rabbit-cluster.sh {command} {' '.join(args)} failed "
                               f"({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout


def _checked(node: int) -> int:
    if node not in NODES:
        raise ValueError(f"no node {node}: the nodes are 1, 2 and 3")
    return node
