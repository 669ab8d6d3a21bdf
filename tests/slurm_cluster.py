"""A single-node SLURM for tests and developers: munge, slurmctld and slurmd from Debian's packages, run as root
from a private folder (its own slurm.conf, munge key and socket, free ports), with fake GPUs so that GPU requests
schedule and SLURM sets `CUDA_VISIBLE_DEVICES` per job. The one thing outside that folder is a link to its
slurm.conf at /etc/slurm/slurm.conf, made only where none exists and removed by `stop` (see `_link_system_conf`).

    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
    python tests/slurm_cluster.py start /tmp/cafe-slurm   # prints the `export SLURM_CONF=...` to use
    python tests/slurm_cluster.py stop /tmp/cafe-slurm

Facts this relies on (SLURM 22.05, Debian 12): the GPUs are gres `File=`s that are symlinks to /dev/null (plain
files are refused as "not a device"); `SlurmdParameters=config_overrides` lets the node announce more CPUs and
memory than the machine has, so the project's profile runs unchanged; there is no slurmdbd, so `sacct` fails and
job states come from `squeue`/`scontrol`, which keep finished jobs for `MinJobAge` seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
SYSTEM_CONF = "/etc/slurm/slurm.conf"
MARK = "Written by tests/slurm_cluster.py"
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")


def missing_commands() -> list[str]:
    """The SLURM and munge programs this machine lacks (install `PACKAGES` with apt-get)."""
    path = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    return [name for name in COMMANDS if shutil.which(name, path=path) is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a killed orphan may linger as one until its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class SlurmCluster:
    """One controller and one compute node (`hostname -s`) on 127.0.0.1, state and logs under `root`."""

    def __init__(
        self,
        root: str | os.PathLike,
        gpus: int = 2,
        cpus: int = 32,
        memory_mb: int = 256000,
        system_conf: str | os.PathLike = SYSTEM_CONF,
    ):
        self.root = Path(root).resolve()
        self.gpus, self.cpus, self.memory_mb = gpus, cpus, memory_mb
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.system_conf = Path(system_conf)
        self._procs: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        """The environment for SLURM commands (sbatch, squeue, Snakemake's SLURM executor) to reach this cluster."""
        out = dict(os.environ)
        out["SLURM_CONF"] = str(self.conf)
        out["PATH"] = f"{out.get('PATH', '')}:/usr/sbin:/sbin"
        return out

    def start(self, timeout: float = 60) -> float:
        """Write the configuration, start the three daemons and wait until the node takes jobs; returns seconds."""
        begin = time.perf_counter()
        if self.root.exists():
            self.stop()
            shutil.rmtree(self.root)
        self._write_config()
        self._link_system_conf()
        munge = self.root / "munge"
        files = {"socket": "munge.socket", "key-file": "munge.key", "pid-file": "munged.pid",
                 "seed-file": "munged.seed", "log-file": "munged.log"}  # fmt: skip
        self._spawn("munged", ["munged", "--foreground", "--force"] + [f"--{k}={munge / v}" for k, v in files.items()])
        self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged to open its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(self._controller_up, timeout, "slurmctld to answer `scontrol ping`")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(self._node_idle, timeout, f"node {self.node} to become idle in `sinfo`")
        return time.perf_counter() - begin

    def stop(self, timeout: float = 30) -> None:
        """Stop the daemons this cluster started, by process id (from `pids.json` when another process started them)."""
        pids = self._pids()
        for name in reversed(DAEMONS):
            if name in pids and is_running(pids[name]):
                os.kill(pids[name], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in reversed(DAEMONS):
            pid = pids.get(name)
            while pid and is_running(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid and is_running(pid):
                os.kill(pid, signal.SIGKILL)
            if name in self._procs:
                self._procs.pop(name).wait(timeout=timeout)
        if self.system_conf.is_symlink() and self.system_conf.resolve() == self.conf.resolve():
            self.system_conf.unlink()

    def run(self, *cmd: str, timeout: float = 30) -> str:
        """Run a SLURM command against this cluster; its stdout (raises with stderr on failure)."""
        result = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller still holds (finished ones for `MinJobAge`), as `scontrol show job` fields."""
        text = self.run("scontrol", "--oneliner", "show", "job")
        if not text.strip() or text.startswith("No jobs"):
            return []
        return [_fields(line) for line in text.splitlines() if line.strip()]

    def _write_config(self) -> None:
        for sub in ("munge", "ctld", "slurmd", "dev", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        devices = []
        for index in range(self.gpus):
            device = self.root / "dev" / f"nvidia{index}"
            device.symlink_to("/dev/null")
            devices.append(str(device))
        (self.root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.node} Name=gpu File={self.root / 'dev'}/nvidia[0-{self.gpus - 1}]\n"
        )
        self.conf.write_text(
            _slurm_conf(
                cluster="cafe-test",
                host=self.node,
                root=self.root,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                node_line=f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
                f"Gres=gpu:{self.gpus} State=UNKNOWN",
            )
        )

    def _link_system_conf(self) -> None:
        """Link slurm.conf at SLURM's default path: the executor plugin's job step runs `srun` with every SLURM_*
        variable but the job's ids removed (SLURM_CONF too), so inside a job only the default path is found, as on
        a real cluster. An existing configuration that is not one of ours is never replaced."""
        target = self.system_conf
        if target.is_symlink() and str(os.readlink(target)).endswith("/slurm.conf") and MARK in _head(target):
            target.unlink()  # a link left by an earlier test cluster
        if target.exists() or target.is_symlink():
            raise RuntimeError(f"{target} exists and is not a test cluster's: not replacing a real SLURM configuration")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(self.conf)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "logs" / f"{name}.out", "wb")  # noqa: SIM115 (the daemon keeps it)
        proc = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        log.close()
        self._procs[name] = proc
        pids = self._pids()
        pids[name] = proc.pid
        (self.root / "pids.json").write_text(json.dumps(pids))

    def _pids(self) -> dict[str, int]:
        path = self.root / "pids.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}:\n{self._logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout} s waiting for {what}:\n{self._logs()}")

    def _controller_up(self) -> bool:
        try:
            return "UP" in self.run("scontrol", "ping", timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def _node_idle(self) -> bool:
        try:
            return self.run("sinfo", "--noheader", "--format=%T", timeout=10).strip() == "idle"
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def _logs(self) -> str:
        parts = []
        for path in sorted(self.root.rglob("*.log")) + sorted((self.root / "logs").glob("*.out")):
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)


def _head(path: Path) -> str:
    try:
        return path.read_text()[:200]
    except OSError:
        return MARK  # a dangling link to a removed test cluster


def _fields(line: str) -> dict[str, str]:
    """`Key=Value Key=Value ...` of `scontrol --oneliner` as a dict (values never contain spaces except Command)."""
    out = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key] = value
    return out


def _slurm_conf(cluster: str, host: str, root: Path, ctld_port: int, slurmd_port: int, node_line: str) -> str:
    return f"""# {MARK}: a throw-away single-node cluster.
ClusterName={cluster}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/slurmd
SlurmctldPidFile={root}/ctld/slurmctld.pid
SlurmdPidFile={root}/slurmd/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MinJobAge=3600
SchedulerParameters=bf_interval=2
GresTypes=gpu
{node_line}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def main(argv: list[str]) -> int:
    """`start DIR` / `stop DIR` for developers (the test suite uses `SlurmCluster` from its fixture)."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    if argv[0] == "stop":
        cluster.stop()
        return 0
    if os.geteuid() != 0:
        print("run as root: the daemons run as root (SlurmUser=root)", file=sys.stderr)
        return 1
    if missing := missing_commands():
        print(f"missing {missing}: apt-get install -y --no-install-recommends {' '.join(PACKAGES)}", file=sys.stderr)
        return 1
    seconds = cluster.start()
    print(f"single-node SLURM up in {seconds:.1f} s; use it with:\nexport SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
