"""A throw-away single-node SLURM cluster on localhost, for tests/test_slurm.py.

``SlurmCluster(base).start()`` installs SLURM and MUNGE from Debian's packages when they are
missing (root only), writes ``slurm.conf``/``gres.conf`` under ``base``, starts ``munged``,
``slurmctld`` and ``slurmd`` in the foreground as child processes on free ports, and waits until
the node is idle. Everything lives under ``base`` (configuration, MUNGE key and socket, state,
spool, logs, command wrappers); apart from installing the packages nothing in /etc or /run is
touched. ``env()`` points every SLURM command - and a ``snakemake --executor slurm`` run and
its jobs - at this cluster. ``stop()`` cancels the cluster's jobs and ends exactly the daemons
it started, by PID.

The container has no systemd and no cgroups, hence ``proctrack/linuxproc``, ``task/none`` and
no accounting (``sacct`` does not work: job status comes from ``squeue``, kept for ``MinJobAge``
seconds). The node advertises one fake GPU (``gres.conf``: ``File=/dev/null``) so that jobs
submitted with ``--gpus=1`` can be scheduled on a machine without one.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
COMMANDS = [
    "sbatch",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
    "srun",
    "slurmctld",
    "slurmd",
    "munged",
]
CLIENT_COMMANDS = ["srun", "sbatch", "squeue", "scontrol", "sinfo", "scancel"]
SBIN = ["/usr/sbin", "/sbin"]


class SlurmError(RuntimeError):
    pass


def which(cmd: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(cmd, path=path)


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if which(c) is None]


def ensure_installed() -> None:
    """Install SLURM and MUNGE with apt-get if any of their commands is missing."""
    if not missing_commands():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmError(
            f"SLURM commands missing ({', '.join(missing_commands())}) and they can only be "
            f"installed as root with apt-get: apt-get install {' '.join(PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], check=False, env=env, capture_output=True, text=True)
        proc = subprocess.run(install, check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or missing_commands():
        raise SlurmError(
            f"could not install {PACKAGES}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> dict[str, str]:
    """``slurmd -C``: NodeName=... CPUs=... RealMemory=... of this machine."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(s for s in out.splitlines() if s.startswith("NodeName="))
    return dict(item.split("=", 1) for item in line.split())


class SlurmCluster:
    """A private single-node SLURM cluster; see the module docstring."""

    def __init__(self, base: Path, min_job_age: int = 600):
        self.base = Path(base)
        self.min_job_age = min_job_age
        self.conf = self.base / "etc" / "slurm.conf"
        self.logs = self.base / "log"
        self.procs: dict[str, subprocess.Popen] = {}
        self.node = ""

    # -- environment -------------------------------------------------------------------
    def env(self, extra_path: list[str] | None = None) -> dict[str, str]:
        """os.environ with SLURM_CONF set to this cluster and SLURM's commands on PATH,
        first the wrappers of ``write_wrappers``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        path = [
            str(self.base / "bin"),
            *(extra_path or []),
            env.get("PATH", "/usr/bin:/bin"),
            *SBIN,
        ]
        env["PATH"] = os.pathsep.join(path)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            list(cmd), check=False, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise SlurmError(
                f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{self.log_tail()}"
            )
        return proc

    def log_tail(self, n: int = 3000) -> str:
        parts = []
        for log in sorted(self.logs.glob("*")) if self.logs.is_dir() else []:
            text = log.read_text(errors="replace")
            if text.strip():
                parts.append(f"--- {log.name} ---\n{text[-n:]}")
        return "\n".join(parts)

    # -- configuration -------------------------------------------------------------------
    def write_config(self) -> None:
        hw = node_hardware()
        self.node = hw["NodeName"]
        if int(hw["CPUs"]) >= 2:
            cpus = " ".join(
                f"{k}={hw[k]}"
                for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
                if k in hw
            )
        else:
            cpus = "CPUs=2"  # the segment rule asks for 2 threads; config_overrides allows it
        # ~1 GiB below the machine's memory, but at least what the rules ask for (8 GB):
        # nothing enforces memory here (no cgroups) and config_overrides trusts these values.
        memory = max(int(hw["RealMemory"]) - 1024, 9000)
        for d in ("etc", "state", "spool", "log", "munge"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        b = self.base
        self.conf.write_text(
            f"""# written by tests/slurm_cluster.py
ClusterName=ffnflowtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={b}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/state/slurmctld.pid
SlurmdPidFile={b}/spool/slurmd.pid
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge={self.min_job_age}
InactiveLimit=0
KillWait=5
Waittime=0
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 {cpus} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.base / "etc" / "gres.conf").write_text(
            f"# fake GPU: jobs asking for --gpus=1 can run on a node without one\n"
            f"AutoDetect=off\nNodeName={self.node} Name=gpu File=/dev/null\n"
        )

    def write_wrappers(self) -> None:
        """``BASE/bin/srun`` etc.: the client commands with SLURM_CONF set to this cluster.

        Inside a job, snakemake-executor-plugin-slurm-jobstep (0.6) runs the rule with ``srun``
        after removing every SLURM_* variable but the job's identity, SLURM_CONF included; a
        real cluster's commands find /etc/slurm/slurm.conf (or configless), ours would not.
        PATH survives (sbatch --export=ALL), so these wrappers, first on PATH, point at it.
        """
        bindir = self.base / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        for cmd in CLIENT_COMMANDS:
            wrapper = bindir / cmd
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{which(cmd)}" "$@"\n')
            wrapper.chmod(0o755)

    # -- daemons ---------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], **kwargs) -> None:
        # In the foreground (-D, --foreground) the daemons log to stderr: that file is the log.
        with open(self.logs / f"{name}.log", "w") as out:
            self.procs[name] = subprocess.Popen(
                cmd,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **kwargs,
            )

    def _wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmError(
                        f"{name} exited ({proc.returncode}) while waiting for {what}\n"
                        f"{self.log_tail()}"
                    )
            if ready():
                return
            time.sleep(0.5)
        raise SlurmError(f"timed out waiting for {what}\n{self.log_tail()}")

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        mdir = self.base / "munge"
        # munged checks ownership and permissions of its key and directories.
        os.chown(mdir, munge.pw_uid, munge.pw_gid)
        os.chmod(mdir, 0o755)  # clients need to reach the socket; the key itself is 0600
        key = mdir / "munge.key"  # a fresh key, private to this cluster
        key.write_bytes(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o600)
        socket_path = mdir / "munge.socket"
        self._spawn(
            "munged",
            [
                which("munged"),
                "--foreground",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--pid-file={mdir}/munged.pid",
                f"--log-file={mdir}/munged.log",
                f"--seed-file={mdir}/munged.seed",
            ],
            user=munge.pw_uid,
            group=munge.pw_gid,
            extra_groups=[],
        )
        self._wait("munged", socket_path.exists, timeout=30)

    def start(self) -> SlurmCluster:
        ensure_installed()
        # The base and its parents must be traversable by the munge user; /tmp is.
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.write_config()
        self.write_wrappers()
        try:
            self._start_munge()
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"])
            self._wait(
                "slurmctld",
                lambda: (
                    self.run("scontrol", "ping", check=False).returncode == 0
                    and "UP" in self.run("scontrol", "ping", check=False).stdout
                ),
            )
            self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.node])
            self._wait(
                "an idle node",
                lambda: (
                    "idle" in self.run("sinfo", "--noheader", "--format=%T", check=False).stdout
                ),
            )
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop(self) -> None:
        """Cancel this cluster's jobs, then end the daemons this object started, by PID."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", pwd.getpwuid(os.getuid()).pw_name, check=False)
            deadline = time.monotonic() + 15
            while (
                time.monotonic() < deadline
                and self.run(
                    "squeue", "--noheader", "--states=RUNNING,COMPLETING", check=False
                ).stdout.strip()
            ):
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    # -- queries for the test --------------------------------------------------------------
    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller remembers (finished ones for MinJobAge seconds)."""
        out = self.run("squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%k").stdout
        keys = ["id", "name", "state", "comment"]
        return [dict(zip(keys, line.split("|", 3))) for line in out.splitlines() if line.strip()]

    def job_details(self, job_id: str) -> str:
        return self.run("scontrol", "--details", "show", "job", job_id, check=False).stdout

    def controller_log(self) -> str:
        return (self.logs / "slurmctld.log").read_text(errors="replace")

    def submitted_ids(self) -> list[str]:
        """Job ids slurmctld logged as submitted (``_slurm_rpc_submit_batch_job: JobId=N``)."""
        return re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", self.controller_log())
