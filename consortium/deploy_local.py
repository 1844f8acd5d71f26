"""``fedchest deploy local``: a real consortium on this machine, one process per party.

A SuperLink (``fedchest-superlink``: Flower's, with a 60 s SQLite busy timeout should its state be a file; TLS
with the consortium CA, SuperNode authentication, runtime dependency installation off, telemetry off) and N
SuperNodes (``fedchest-supernode``: Flower's, polling every 0.1 s instead of every 3 s), each with its own site
folder, ``site.toml`` and ECDSA key, connecting over HTTPS on loopback. The run is submitted with ``flwr run``
exactly as an admin would, followed to the end, and every process started here is stopped afterwards (also on
errors and Ctrl-C). The SuperExecs poll for tasks every 0.1 s (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``).

The SuperLink keeps its state in memory by default: one SQLite file shared by every party's requests locked under
load (HTTP 500s, and waits of seconds). What survives a SuperLink restart is fedchest's: the registry, the
checkpoints and ``fedchest run resume``; the sites' public keys are registered again from the consortium's key
folder each time the link starts, and the SuperNodes are started again (their node ids belonged to the old
state). ``persistent_state=True`` (``--persistent-link-state``) keeps Flower's state in ``superlink.db`` instead.

Console scripts are run from this interpreter's folder (``BIN``) and import fedchest from ``PYTHONPATH`` first
(the environment is passed on), so a source checkout runs its own code; ``fedchest-supernode`` is run as
``python -m client.deploy.supernode``, which needs no installed script.

The same commands, with other addresses, are what the containers in ``deploy/`` run.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from server.deploy.certs import make_ca, make_site_key, make_superlink_cert
from server.deploy.overhead import describe, describe_faults, link_faults, median_overhead, round_overheads
from server.deploy.superlink import SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S
from consortium.simulation import QUIET_FLOWER_ENV

CONNECTION = "fedchest-local"
BIN = Path(sys.executable).parent
IN_MEMORY = ":flwr-in-memory:"  # Flower 1.41's --database value for its in-memory state (its default)


class DeployError(RuntimeError):
    """A deployment step that failed; the message names the step and the log file to read."""


def _plain(text: str) -> str:
    """A Flower log without colour codes and without the coloured copies of its INFO, WARNING and DEBUG records
    (``flwr run --stream`` prints every record twice: coloured, then with a timestamp). ERROR records are kept in
    both forms: the SuperLink's own log has only the coloured one."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]
    return "\n".join(line for line in lines if not re.match(r"(INFO|WARNING|DEBUG) +:", line))


def _accepts(sock: Path) -> bool:
    """A Unix socket with a process accepting on it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(sock))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_dir() -> Path:
    """The Flower app folder (the source checkout's root, where pyproject.toml declares the apps)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").exists():
        raise DeployError(f"{root}: no pyproject.toml here; `flwr run` needs the fedchest source folder")
    return root


def staged_app_dir(dest: Path) -> Path:
    """The Flower app folder as `flwr run` needs it: only what the FAB holds (the folders and files of pyproject's
    ``fab-include``), copied under ``dest``. Flower 1.41 walks every file under the folder it is given (``os.walk``
    in ``flwr.cli.utils.collect_files``) before it applies the include patterns: from a checkout holding its .venv
    (6.9 GB) building the FAB took 11.1 s here, from the same sources alone 2.1 s. The FAB is the same either way
    (same files, same hash), so the warm workers' check against their preloaded code is unchanged."""
    import tomllib

    root = app_dir()
    try:
        patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["fab-include"]
    except (KeyError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"{root / 'pyproject.toml'}: [tool.flwr.app] fab-include unreadable ({exc})") from exc
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for top in sorted({p.split("/", 1)[0] for p in patterns}):
        src = root / top
        if src.is_dir():
            shutil.copytree(src, dest / top, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy2(src, dest / top)
    return dest


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        **QUIET_FLOWER_ENV, "FLWR_HOME": str(flwr_home), "PYTHONUNBUFFERED": "1",
        SUPEREXEC_POLL_ENV: env.get(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S),
        # the SuperLink and SuperNodes start flower-superexec, flwr-serverapp and flwr-clientapp by name
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    env.update(extra or {})
    return env


def write_connection(flwr_home: Path, port: int, ca: Path | None, name: str = CONNECTION) -> None:
    """The CLI's connection to the SuperLink ($FLWR_HOME/config.toml); insecure only when ``ca`` is None."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    tls = f'root-certificates = "{ca.resolve()}"' if ca is not None else "insecure = true"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\n{tls}\n')


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalConsortium:
    """The processes of a local deployment. Use as a context manager: everything started is stopped on exit."""

    out: Path
    port: int = field(default_factory=free_port)
    insecure: bool = False
    db_url: str | None = None
    persistent_state: bool = False  # the SuperLink's Flower state in out/superlink.db instead of in memory
    procs: list[Proc] = field(default_factory=list)
    registered: set[str] = field(default_factory=set)  # sites whose keys the running SuperLink knows
    # warm ClientApp (client/warm): a worker per SuperNode forks each task from preloaded code; FEDCHEST_WARM=0 or
    # `fedchest deploy local --cold` keeps Flower's fresh flwr-clientapp process per message
    warm: bool = field(default_factory=lambda: os.environ.get("FEDCHEST_WARM", "1") != "0")
    workers: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = self.out.resolve()
        self.certs = self.out / "certs"
        self.keys = self.out / "keys"
        self.logs = self.out / "logs"
        self.flwr_home = self.out / "flwr-home"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = flower_env(self.flwr_home, {"FEDCHEST_DB_URL": self.db_url} if self.db_url else None)
        self.app = staged_app_dir(self.out / "app")  # what `flwr run` packs into the FAB, and nothing else

    @property
    def state_db(self) -> str:
        """The SuperLink's ``--database``: Flower's in-memory state, or ``superlink.db`` if persistent."""
        return str(self.out / "superlink.db") if self.persistent_state else IN_MEMORY

    # ------------------------------------------------------------------ keys and certificates
    def make_certs(self) -> None:
        if self.insecure:
            return
        if not (self.certs / "ca.crt").exists():
            make_ca(self.certs)
        if not (self.certs / "superlink.pem").exists():
            make_superlink_cert(self.certs, self.certs, ["localhost", "127.0.0.1"])

    def site_key(self, site: str) -> Path:
        if not (self.keys / site).exists():
            make_site_key(self.keys, site)
        return self.keys / site

    # ------------------------------------------------------------------ processes
    def _start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.logs / f"{name}.log"
        f = log.open("ab")
        popen = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env or self.env, cwd=self.out,
                                 start_new_session=True)
        f.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_superlink(self) -> Proc:
        """The SuperLink, once its port is open; with in-memory state and node authentication, every site key in
        the key folder is registered again (a restarted link has forgotten them)."""
        write_connection(self.flwr_home, self.port, None if self.insecure else self.certs / "ca.crt")
        cmd = [str(BIN / "fedchest-superlink"), "--port", str(self.port), "--database", self.state_db,
               "--disable-runtime-dependency-installation"]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.certs / "ca.crt"),
                    "--ssl-certfile", str(self.certs / "superlink.pem"),
                    "--ssl-keyfile", str(self.certs / "superlink.key"), "--enable-supernode-auth"]
        proc = self._start("superlink", cmd)
        self._wait_port(proc)
        self.registered = set()
        if not self.insecure and not self.persistent_state:
            self.register_all([public.stem for public in sorted(self.keys.glob("*.pub"))])
        return proc

    def _wait_port(self, proc: Proc, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.popen.poll() is not None:
                raise DeployError(f"the SuperLink exited with code {proc.popen.returncode}; "
                                  f"see {proc.log}:\n{proc.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.3)
        raise DeployError(f"the SuperLink did not open port {self.port} within {timeout:.0f} s; see {proc.log}")

    def flwr(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        r = subprocess.run([str(BIN / "flwr"), *args], capture_output=True, text=True, env=self.env,
                           cwd=self.out, timeout=timeout)
        if check and r.returncode != 0:
            raise DeployError(f"`flwr {' '.join(args[:2])}` failed (exit {r.returncode}):\n"
                              f"{(r.stdout + r.stderr).strip()[-2000:]}")
        return r

    def register(self, site: str) -> None:
        self.flwr("supernode", "register", str(self.keys / f"{site}.pub"), CONNECTION, "--name", site)
        self.registered.add(site)

    def register_all(self, sites: list[str]) -> None:
        """``register`` for each site, side by side: each is a ``flwr`` CLI process, mostly start-up."""
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(sites)))) as pool:
            list(pool.map(self.register, sites))

    def supernodes(self) -> list[dict]:
        r = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        return json.loads(r.stdout).get("nodes", [])

    def start_supernode(self, site: str, site_config: Path, key: Path | None = None,
                        max_retries: int | None = None) -> Proc:
        cmd = [sys.executable, "-m", "client.deploy.supernode", "--superlink", f"127.0.0.1:{self.port}",
               "--port", str(free_port()),
               "--node-config", f'site-config="{site_config.resolve()}"']
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.certs / "ca.crt"),
                    "--auth-supernode-private-key", str(key or self.keys / site)]
        if max_retries is not None:
            cmd += ["--max-retries", str(max_retries)]
        return self._start(f"supernode-{site}", cmd, env=self.supernode_env(site))

    # ------------------------------------------------------------------ warm ClientApp workers
    def start_worker(self, site: str) -> Proc:
        """The site's warm ClientApp worker (``python -m client.warm.worker``), which writes the flwr-clientapp
        shim its SuperNode finds first on PATH. Sockets live in a short temporary folder (a Unix socket path has
        at most 107 bytes)."""
        if not self.workers:
            self.warm_dir = Path(tempfile.mkdtemp(prefix="fedchest-warm-"))
        sock = self.warm_dir / f"{site}.sock"
        proc = self._start(f"warm-{site}", [sys.executable, "-m", "client.warm.worker", "--socket", str(sock),
                                            "--shim-dir", str(self.warm_dir / "bin")])
        self.workers[site] = sock
        return proc

    def wait_workers(self, timeout: float = 600.0) -> None:
        end = time.monotonic() + timeout
        for site, sock in self.workers.items():
            proc = next(p for p in self.procs if p.name == f"warm-{site}")
            while not _accepts(sock):
                if proc.popen.poll() is not None:
                    raise DeployError(f"the warm ClientApp worker of {site} exited with code "
                                      f"{proc.popen.returncode}; see {proc.log}:\n{proc.tail()}")
                if time.monotonic() > end:
                    raise DeployError(f"the warm ClientApp worker of {site} was not ready within {timeout:.0f} s; "
                                      f"see {proc.log}")
                time.sleep(0.3)

    def share_cores(self, n_sites: int) -> None:
        """Sites on one host share its cores: each ClientApp gets cores // sites torch threads (FEDCHEST_THREADS,
        OMP_NUM_THREADS; a value already set wins). A hospital's own machine keeps all of them; here, threads of
        several sites spinning on the same cores made a 0.45 s training step take over 20 s."""
        share = str(max(1, (os.cpu_count() or 1) // max(1, n_sites)))
        self.env = {**self.env, "FEDCHEST_THREADS": os.environ.get("FEDCHEST_THREADS", share),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", share)}

    def supernode_env(self, site: str) -> dict[str, str]:
        """The SuperNode's environment: with a warm worker, the shim first on PATH and the worker's socket."""
        if site not in self.workers:
            return self.env
        return {**self.env, "PATH": f"{self.warm_dir / 'bin'}{os.pathsep}{self.env['PATH']}",
                "FEDCHEST_WARM_SOCKET": str(self.workers[site])}

    def start_workers(self, sites: list[str]) -> None:
        """Share the host's cores among ``sites`` and, when warm, start each site's worker not started yet (they
        preload in the background; ``start_sites`` waits for them)."""
        self.share_cores(len(sites))
        if self.warm:
            for site in sites:
                if site not in self.workers:
                    self.start_worker(site)

    def start_sites(self, site_configs: list[Path]) -> dict[str, Proc]:
        """A SuperNode for each ``site.toml`` (named after its folder; with TLS, its key made and registered
        first), returned once all of them are online."""
        procs = {}
        self.start_workers([cfg.parent.name for cfg in site_configs])
        if not self.insecure:
            for cfg in site_configs:
                self.site_key(cfg.parent.name)
            self.register_all([cfg.parent.name for cfg in site_configs if cfg.parent.name not in self.registered])
        self.wait_workers()
        for cfg in site_configs:
            site = cfg.parent.name
            procs[site] = self.start_supernode(site, cfg)
        self.wait_online(len(site_configs))
        return procs

    def wait_online(self, n: int, timeout: float = 120.0) -> list[dict]:
        end = time.monotonic() + timeout
        nodes: list[dict] = []
        while time.monotonic() < end:
            for p in self.procs:
                if p.name.startswith("supernode-") and p.popen.poll() is not None:
                    raise DeployError(f"{p.name} exited with code {p.popen.returncode}; see {p.log}:\n{p.tail()}")
            nodes = self.supernodes()
            if sum(1 for x in nodes if str(x.get("status", "")).lower() == "online") >= n:
                return nodes
            time.sleep(1.0)  # each look is a `flwr` CLI process; the run, submitted already, does not wait on this
        raise DeployError(f"only {sum(1 for x in nodes if x.get('status') == 'online')} of {n} SuperNodes came "
                          f"online within {timeout:.0f} s; see {self.logs}")

    def submit(self, run_config: dict, stream_to: Path | None = None, timeout: float = 3600.0) -> int:
        """``flwr run`` with ``--stream``: returns when the run ends; its log goes to ``stream_to``."""
        items = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in run_config.items())
        log = stream_to or self.logs / "flwr-run.log"
        t0 = time.monotonic()
        with log.open("ab") as f:
            r = subprocess.run([str(BIN / "flwr"), "run", str(self.app), CONNECTION, "--run-config", items,
                                "--stream"], stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=self.out,
                               timeout=timeout)
        if r.returncode != 0:
            raise DeployError(f"`flwr run` failed (exit {r.returncode}); see {log}:\n"
                              + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        run_id = self.latest_run()
        # the log stream can end before the run does (the SuperLink's SQLite state answered one of its polls with
        # "database is locked" in a 3-node test): the run is what counts, so wait for the link to call it finished
        status = self.status(run_id, settle=max(60.0, timeout - (time.monotonic() - t0)))
        if status != "finished:completed":
            link = self.logs / "superlink.log"
            errors = [x for x in _plain(link.read_text(errors="replace")).splitlines() if x.startswith("ERROR")]
            raise DeployError(f"Flower run {run_id} ended as {status!r}; the last lines of {log}:\n"
                              + "\n".join(_plain(log.read_text(errors="replace")).splitlines()[-40:])
                              + f"\nthe last errors in {link}:\n" + "\n".join(errors[-8:] or ["(none)"]))
        return run_id

    def runs(self, patience: float = 120.0) -> list[dict]:
        """The SuperLink's runs (``flwr ls``). A busy link (its SQLite state locked for longer than its 5 s busy
        timeout) answers with an error: asked again every 2 s for up to ``patience`` seconds."""
        end = time.monotonic() + patience
        while True:
            r = self.flwr("ls", CONNECTION, "--format", "json", check=False)
            with contextlib.suppress(ValueError):
                answer = json.loads(r.stdout)
                if r.returncode == 0 and answer.get("success") and "runs" in answer:
                    return answer["runs"]
            if time.monotonic() >= end:
                raise DeployError(f"`flwr ls` failed (exit {r.returncode}) for {patience:.0f} s:\n"
                                  f"{(r.stdout + r.stderr).strip()[-2000:]}")
            time.sleep(2.0)

    def latest_run(self) -> int:
        runs = self.runs()
        if not runs:
            raise DeployError("the SuperLink lists no run after `flwr run`")
        return int(max(runs, key=lambda r: str(r.get("created-at", "")))["run-id"])

    def status(self, run_id: int, settle: float = 60.0) -> str:
        """The run's status on the SuperLink. ``flwr run --stream`` can return a moment before the link marks the
        run finished, so a run still "running" is asked again for up to ``settle`` seconds."""
        end = time.monotonic() + settle
        while True:
            status = next((str(r.get("status", "")) for r in self.runs() if int(r["run-id"]) == run_id), None)
            if status is None:
                raise DeployError(f"run {run_id} is not on the SuperLink")
            if status.startswith("finished") or time.monotonic() >= end:
                return status
            time.sleep(2.0)

    def stop(self, proc: Proc, timeout: float = 20.0) -> None:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        """Every process stopped: the SuperNodes and warm workers signalled at once, the SuperLink last."""
        for proc in self.procs:
            if proc.name != "superlink" and proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in reversed(list(self.procs)):  # each waited for (and killed after its timeout), the link last
            self.stop(proc)
        if self.workers:
            shutil.rmtree(self.warm_dir, ignore_errors=True)

    def __enter__(self) -> LocalConsortium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def deploy_local(out: Path, n_sites: int = 3, rounds: int = 2, images: int = 200, image_size: int = 64,
                 preset: str = "tiny", local_epochs: int = 1, seed: int = 0, insecure: bool = False,
                 db_url: str | None = None, extra_config: dict | None = None,
                 persistent_state: bool = False, warm: bool | None = None) -> dict:
    """Synthetic sites, certificates and keys, a SuperLink and ``n_sites`` SuperNodes as processes, one
    ``flwr run`` followed to the end; returns the run's summary (every process is stopped on return)."""
    from consortium.sites import make_sites, site_plan

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    security = "INSECURE (no TLS, no node authentication)" if insecure else "TLS + SuperNode authentication"
    print(f"fedchest deploy local: {n_sites} sites, {security}; SYNTHETIC data")
    run_dir = out / "run"
    (run_dir / "summary.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    with LocalConsortium(out / "deployment", insecure=insecure, db_url=db_url, persistent_state=persistent_state) as c:
        if warm is not None:
            c.warm = warm
        print("ClientApp: " + ("warm (a worker per SuperNode forks each task; --cold for a process per message)"
                               if c.warm else "cold (a new flwr-clientapp process per message)"))
        c.make_certs()
        c.start_superlink()
        print(f"SuperLink on 127.0.0.1:{c.port} (state {'in memory' if c.state_db == IN_MEMORY else c.state_db}, "
              f"logs {c.logs})")
        c.start_workers([folder for _, _, folder in site_plan(n_sites)])  # they preload while the sites are made
        run_config = {"num-server-rounds": rounds, "local-epochs": local_epochs, "model-preset": preset,
                      "image-size": image_size, "min-nodes": n_sites, "out-dir": str(run_dir), "seed": seed,
                      "run-name": f"deploy-local-{n_sites}sites", "round-timeout": 1800.0,
                      "node-wait": 1800.0, **(extra_config or {})}
        # the run is submitted now: the ServerApp starts up while the sites are made and their SuperNodes start,
        # and its first round waits for them: a site that does not come fails start_sites' own waits (workers,
        # SuperNodes online), which ends the deployment, so the run's node-wait need not guess how long that takes
        # (on an error here the consortium stops its processes on the way out, which ends `flwr run` too)
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            submitted = pool.submit(c.submit, run_config)
            sites_dir = make_sites(out, n_sites, images, image_size, seed)
            c.start_sites(sorted(sites_dir.glob("*/site.toml")))
            print(f"{n_sites} SuperNodes online {time.perf_counter() - t0:.1f}s after start (site synthesis "
                  "included); the run was submitted with flwr run at the start")
            run_id = submitted.result()
        finally:
            pool.shutdown(wait=False)
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            raise DeployError(f"the ServerApp wrote no {summary_path}; see {c.logs / 'flwr-run.log'}")
        summary = json.loads(summary_path.read_text())
        # read before the processes are stopped: what they log while shutting down (a SuperExec's request cut off
        # by its SuperNode's exit) is not a fault of the run
        faults = link_faults(c.logs, summary["db_url"], summary["run_id"])
    overheads = round_overheads(summary["db_url"], summary["run_id"])
    summary["deploy"] = {"flower_run_id": run_id, "wall_seconds": time.perf_counter() - t0, "sites": n_sites,
                         "tls": not insecure, "node_auth": not insecure, "logs": str(c.logs),
                         "link_state": "persistent" if persistent_state else "in-memory",
                         "median_overhead_seconds": median_overhead(overheads), "faults": faults,
                         "overhead_per_round": [{**asdict(r), "overhead": r.overhead} for r in overheads]}
    summary_path.write_text(json.dumps(summary, indent=1))
    last = summary["rounds"][-1].get("pooled", {}) if summary.get("rounds") else {}
    pooled = last.get("mAP")
    pooled_text = (f"pooled mAP {pooled:.3f} (synthetic)" if isinstance(pooled, (int, float)) else
                   "no pooled mAP: no class reached min_count test positives at any site (small test splits)")
    print(f"run {summary['run_id']} (Flower run {run_id}) finished: {summary['rounds_completed']} rounds in "
          f"{summary['deploy']['wall_seconds']:.1f}s; {pooled_text}")
    print(describe(overheads))
    print(describe_faults(faults))
    print(f"summary: {summary_path}\nregistry: {summary['db_url']}\nall processes stopped")
    return summary
