"""Deployment: certificates and keys, SuperNode admission on a real TLS SuperLink (loopback), and a full
multi-process consortium run with `fedchest deploy local`."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.deploy.certs import CertError, make_ca, make_site_key, make_superlink_cert
from consortium.deploy_local import LocalConsortium, free_port
from tests.test_resume import _rows


def test_certificates_and_keys(tmp_path):
    ca_crt, ca_key = make_ca(tmp_path)
    pem, key = make_superlink_cert(tmp_path, tmp_path, ["fl.example.org", "10.1.2.3"])
    private, public = make_site_key(tmp_path / "keys", "site-a")
    for p in (ca_key, key, private):
        assert p.stat().st_mode & 0o777 == 0o600, p
    assert public.stat().st_mode & 0o077 == 0o044
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"fl.example.org", "localhost"}
    assert {str(i) for i in sans.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "127.0.0.1", "::1"}
    ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    ctx = ssl.create_default_context(cafile=str(ca_crt))  # Python's TLS stack accepts the chain and the key
    ctx.load_cert_chain(str(pem), str(key))
    loaded = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey) and loaded.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(CertError, match="already exists"):
        make_site_key(tmp_path / "keys", "site-a")  # never overwrites a key
    with pytest.raises(CertError, match="site name"):
        make_site_key(tmp_path / "keys", "../evil")
    with pytest.raises(CertError, match="expected a DNS name"):
        make_superlink_cert(tmp_path, tmp_path / "x", ["bad name!"])
    with pytest.raises(CertError, match="fedchest certs init"):
        make_superlink_cert(tmp_path / "none", tmp_path / "y", ["a.org"])


def test_certs_cli_prints_no_key_material(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "consortium.cli", "certs", *args], capture_output=True, text=True)

    r = cli("init", "--out", str(tmp_path), "--name", "fl.example.org")
    assert r.returncode == 0, r.stderr
    r2 = cli("site", "site-a", "site-b", "--out", str(tmp_path / "keys"))
    assert r2.returncode == 0, r2.stderr
    secrets = [(tmp_path / "ca.key").read_text(), (tmp_path / "superlink.key").read_text(),
               (tmp_path / "keys" / "site-a").read_text()]
    for s in secrets:
        body = "".join(s.splitlines()[1:-1])
        assert body[:40] not in r.stdout + r.stderr + r2.stdout + r2.stderr
    assert "fl.example.org" in r.stdout and "127.0.0.1" in r.stdout
    assert cli("site", "site-a", "--out", str(tmp_path / "keys")).returncode == 2  # exists: refused, exit 2


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    """A TLS SuperLink with node authentication; site-a and site-b registered, site-a online."""
    c = LocalConsortium(tmp_path_factory.mktemp("superlink"))
    try:
        c.make_certs()
        c.start_superlink()
        for site in ("site-a", "site-b", "rogue"):
            c.site_key(site)
        c.register("site-a")
        c.register("site-b")
        c.start_supernode("site-a", c.out / "site-a.toml")
        c.wait_online(1)
        yield c
    finally:
        c.close()


def test_a_restarted_in_memory_superlink_knows_the_sites_keys_again(tmp_path):
    """The link's state is in memory: a restart forgets every registration, and the link registers the keys in
    the consortium's key folder again as it starts. A site then joins with its key, and is not registered twice."""
    c = LocalConsortium(tmp_path)
    try:
        c.make_certs()
        for site in ("site-a", "site-b"):
            c.site_key(site)
        assert c.state_db == ":flwr-in-memory:"
        link = c.start_superlink()
        assert c.registered == {"site-a", "site-b"} and len(c.supernodes()) == 2
        c.stop(link)
        c.start_superlink()
        nodes = c.supernodes()
        assert c.registered == {"site-a", "site-b"} and [n["status"] for n in nodes] == ["registered"] * 2, nodes
        (tmp_path / "site-a").mkdir()
        (tmp_path / "site-a" / "site.toml").write_text("")  # the SuperNode only passes its path on
        c.start_sites([tmp_path / "site-a" / "site.toml"])  # online, and no second registration of site-a
        assert len(c.supernodes()) == 2
    finally:
        c.close()


def test_unregistered_supernode_is_refused(superlink):
    proc = superlink.start_supernode("rogue", superlink.out / "rogue.toml", max_retries=1)
    assert proc.popen.wait(120) != 0
    superlink.stop(proc)
    assert "Failed to activate SuperNode" in proc.log.read_text()
    assert "No SuperNode found with the given public key" in (superlink.logs / "superlink.log").read_text()
    assert sum(n["status"] == "online" for n in superlink.supernodes()) == 1


def test_a_second_node_with_an_online_sites_key_is_refused(superlink):
    proc = superlink.start_supernode("site-a-copy", superlink.out / "x.toml", key=superlink.keys / "site-a",
                                     max_retries=1)
    assert proc.popen.wait(120) != 0
    superlink.stop(proc)
    assert "Failed to activate SuperNode" in proc.log.read_text()
    assert sum(n["status"] == "online" for n in superlink.supernodes()) == 1


def _activate(superlink, public_of: Path, signer: Path) -> httpx.Response:
    """Flower's activate-node call as a SuperNode makes it: the claimed public key in the body and the headers,
    a timestamp, and its signature by ``signer``'s private key."""
    from flwr.proto.fleet_pb2 import ActivateNodeRequest
    from flwr.supercore.date import now
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    claimed = public_key_to_bytes(serialization.load_ssh_private_key(public_of.read_bytes(), None).public_key())
    key = serialization.load_ssh_private_key(signer.read_bytes(), password=None)
    ts = now().isoformat()
    headers = {"content-type": "application/protobuf", "flwr-public-key": base64.b64encode(claimed).decode(),
               "flwr-timestamp": ts, "flwr-signature": base64.b64encode(sign_message(key, ts.encode())).decode()}
    body = ActivateNodeRequest(public_key=claimed, heartbeat_interval=30).SerializeToString()
    return httpx.post(f"https://127.0.0.1:{superlink.port}/v1/fleet/activate-node", headers=headers, content=body,
                      verify=ssl.create_default_context(cafile=str(superlink.certs / "ca.crt")))


def test_a_node_claiming_another_sites_key_is_refused(superlink):
    """A request that presents site-b's registered public key but is signed with another key is rejected
    before it reaches the Fleet API; the same request signed by site-b's own key passes authentication."""
    forged = _activate(superlink, superlink.keys / "site-b", superlink.keys / "rogue")
    assert forged.status_code == 401 and "authentication" in forged.text, forged.text
    genuine = _activate(superlink, superlink.keys / "site-b", superlink.keys / "site-b")
    assert genuine.status_code == 200, genuine.text


def test_supernode_without_tls_cannot_join(superlink):
    online = sum(n["status"] == "online" for n in superlink.supernodes())
    cmd_out = superlink.out / "logs" / "insecure-node.log"
    with cmd_out.open("wb") as f:
        p = subprocess.run([str(Path(sys.executable).parent / "flower-supernode"), "--insecure", "--superlink",
                            f"127.0.0.1:{superlink.port}", "--max-retries", "1", "--port", str(free_port())],
                           stdout=f, stderr=subprocess.STDOUT, env=superlink.env, timeout=120)
    log = cmd_out.read_text()
    assert p.returncode != 0
    # refused for the plaintext channel itself: the TLS listener drops the request before any authentication
    # (a node refused by authentication says "Failed to activate SuperNode" instead, as in the tests above)
    assert "Starting insecure channel" in log, log[-2000:]
    # the TLS listener drops the plaintext connection: the client sees it closed, or reset, before any answer
    # (which of the two depends on timing: "Connection reset by peer" seen once, 2026-12-03)
    dropped = ("Server disconnected without sending a response", "Connection reset by peer")
    assert "Exit Code: 305" in log and any(d in log for d in dropped), log[-2000:]
    assert "Failed to activate SuperNode" not in log
    assert sum(n["status"] == "online" for n in superlink.supernodes()) <= online  # no node joined (a stopped
    # node of an earlier test may still count as online before and have gone offline since)


SOAK_SITES, SOAK_ROUNDS = 4, 4


@pytest.mark.e2e
def test_deploy_local_soak_every_round_of_every_site_without_a_fault(tmp_path):
    """`fedchest deploy local` as a short soak (the benchmark's is 10 SuperNodes x 20 rounds): SuperLink + 4
    SuperNodes as processes, TLS and node auth on, `flwr run`; every site trains in every round, and the link shows
    no HTTP 5xx answer, the ServerApp no retry, the SuperNodes no error; every process stopped; every task forked
    by a warm worker."""
    r = subprocess.run([sys.executable, "-m", "consortium.cli", "deploy", "local", "--sites", str(SOAK_SITES),
                        "--rounds", str(SOAK_ROUNDS), "--images-per-site", "40", "--image-size", "32",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_completed"] == SOAK_ROUNDS and len(summary["sites"]) == SOAK_SITES
    faults = summary["deploy"]["faults"]
    assert faults == {"http_5xx_answers": 0, "serverapp_retries": 0, "supernode_errors": 0, "site_misses": 0}, faults
    assert "link faults: 0 http 5xx answers, 0 serverapp retries, 0 supernode errors, 0 site misses (none)" in r.stdout
    trained = _rows(summary["db_url"], "SELECT round, count(DISTINCT site) FROM metrics WHERE name = 'train_seconds' "
                    "GROUP BY round")
    assert sorted(map(tuple, trained)) == [(rnd, SOAK_SITES) for rnd in range(1, SOAK_ROUNDS + 1)]
    assert summary["deploy"]["tls"] and summary["deploy"]["node_auth"]
    assert "TLS + SuperNode authentication" in r.stdout and "all processes stopped" in r.stdout
    log = (tmp_path / "deployment" / "logs" / "superlink.log").read_text()
    assert "https://127.0.0.1" in log
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # nothing left running
    if os.environ.get("FEDCHEST_WARM", "1") != "0":  # warm ClientApp (client/warm): every task forked by a worker
        logs = tmp_path / "deployment" / "logs"
        served = sum(p.read_text().count("exited with code 0") for p in logs.glob("warm-*.log"))
        # a train task per site and round (evaluating the round before's model first), and the last round's
        # evaluation (evaluate-with-train)
        assert served >= SOAK_SITES * (SOAK_ROUNDS + 1)
        nodes = "".join(p.read_text() for p in logs.glob("supernode-*.log"))
        assert "matches the preloaded code" in nodes and "cold start" not in nodes
        assert "fedchest-warm-" not in ps


def render_proxy(out: Path, listen: int, upstream: str, cert_dir: Path) -> Path:
    """deploy/nginx/fleet.conf.template as the nginx image renders it, inside a minimal main config."""
    template = (Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "fleet.conf.template").read_text()
    values = {"FLEET_LISTEN_PORT": str(listen), "SUPERLINK_UPSTREAM": upstream, "SUPERLINK_TLS_NAME": "localhost",
              "CERT_DIR": str(cert_dir)}
    for k, v in values.items():
        template = template.replace("${" + k + "}", v)
    assert "${" not in template
    (out / "fleet.conf").write_text(template)
    main = out / "nginx.conf"
    main.write_text(f"""worker_processes 1;
pid {out}/nginx.pid;
error_log {out}/error.log;
events {{}}
http {{
  access_log {out}/access.log;
  client_body_temp_path {out}/body; proxy_temp_path {out}/proxy; fastcgi_temp_path {out}/fcgi;
  uwsgi_temp_path {out}/uwsgi; scgi_temp_path {out}/scgi;
  include {out}/fleet.conf;
}}
""")
    return main


@pytest.fixture(scope="module")
def fleet_proxy(superlink, tmp_path_factory):
    import shutil

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (Debian package nginx-light; `make test` installs it when it may)")
    out = tmp_path_factory.mktemp("proxy")
    port = free_port()
    conf = render_proxy(out, port, f"127.0.0.1:{superlink.port}", superlink.certs)
    test = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(out)], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(out), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import socket
        import time

        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_proxy_serves_the_fleet_api_and_refuses_the_control_api(superlink, fleet_proxy):
    ctx = ssl.create_default_context(cafile=str(superlink.certs / "ca.crt"))
    base = f"https://127.0.0.1:{fleet_proxy}"
    # what an admin can do on the SuperLink's own port...
    direct = httpx.post(f"https://127.0.0.1:{superlink.port}/v1/control/list-runs",
                        headers={"content-type": "application/protobuf"}, content=b"", verify=ctx)
    assert direct.status_code != 403
    # ...a hospital cannot do through the proxy
    for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/pull-messages", "/docs", "/health"):
        r = httpx.post(base + path, headers={"content-type": "application/protobuf"}, content=b"", verify=ctx)
        assert r.status_code == 403 and "only the Fleet API" in r.text, (path, r.status_code)
    # the Fleet API passes, node authentication still decides
    from flwr.proto.fleet_pb2 import ActivateNodeRequest

    r = httpx.post(base + "/v1/fleet/activate-node", headers={"content-type": "application/protobuf"},
                   content=ActivateNodeRequest().SerializeToString(), verify=ctx)
    assert r.status_code == 401 and "authentication" in r.text


def test_a_supernode_joins_through_the_proxy(superlink, fleet_proxy):
    online = sum(n["status"] == "online" for n in superlink.supernodes())
    superlink.site_key("site-c")
    superlink.register("site-c")
    cmd = [sys.executable, "-m", "client.deploy.supernode", "--superlink", f"127.0.0.1:{fleet_proxy}",
           "--root-certificates", str(superlink.certs / "ca.crt"), "--auth-supernode-private-key",
           str(superlink.keys / "site-c"), "--port", str(free_port())]
    proc = superlink._start("supernode-site-c-via-proxy", cmd)
    try:
        superlink.wait_online(online + 1, timeout=90)
    finally:
        superlink.stop(proc)


def test_container_files_are_consistent():
    """Docker does not run here: check what can be checked statically. The compose file parses, every file it
    mounts or builds from is in the repository or made by `fedchest certs` / `fedchest-site synth` as the guide
    says, images run as a non-root user, nothing installs at run time, site data and keys are read-only."""
    import yaml

    root = Path(__file__).resolve().parent.parent
    deploy = root / "deploy"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    services = compose["services"]
    assert {"superlink", "fleet-proxy", "postgres", "site-a", "site-b", "site-c"} <= set(services)
    generated = ("./certs", "./keys", "./sites")  # made by the commands in deploy/README.md
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            assert (deploy / build["context"] / build["dockerfile"]).exists(), name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./") and not src.startswith(generated):
                assert (deploy / src).exists(), (name, src)
        if name.startswith("site-"):
            mounts = {v.split(":")[1]: v.split(":")[2:] for v in svc["volumes"]}
            assert mounts["/site"] == ["ro"] and mounts["/keys/site"] == ["ro"] and mounts["/certs/ca.crt"] == ["ro"]
            assert svc["read_only"] is True and "ports" not in svc  # sites need no inbound port
            assert svc["environment"]["FEDCHEST_SUPERLINK"].startswith("fleet-proxy:")
    assert services["superlink"]["ports"] == ["127.0.0.1:8000:8000"]  # Control API: coordinator host only
    assert services["fleet-proxy"]["volumes"][0].startswith("./nginx/fleet.conf.template:")
    guide = (deploy / "README.md").read_text()
    for cmd in ("fedchest certs init", "fedchest certs site", "fedchest-site synth", "fedchest-site check",
                "flwr supernode register"):
        assert cmd in guide, cmd

    dockerfile = (deploy / "Dockerfile").read_text()
    stages = dockerfile.split("\nFROM ")
    for stage in stages[2:]:  # site, coordinator
        assert "\nUSER app" in stage and "ENTRYPOINT" in stage
        entry = stage[stage.index("ENTRYPOINT"):]
        assert "pip" not in entry and "uv " not in entry  # no run-time installs
    assert "--disable-runtime-dependency-installation" in dockerfile and "--enable-supernode-auth" in dockerfile
    site_stage = next(stage for stage in stages if stage.startswith("base AS site"))
    assert 'exec $warm fedchest-supernode --superlink' in site_stage  # polls within tenths of a second, warm ClientApp
    assert "warm='python -m client.warm.site --'" in site_stage and "FEDCHEST_WARM_SOCKET=" in site_stage
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fedchest-supernode"] == "client.deploy.supernode:main"
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (root / src).exists(), src
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    packages = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    missing = {p.rstrip("*") for p in packages["include"]} - copied  # the image installs every package
    assert not missing, f"deploy/Dockerfile does not COPY {sorted(missing)}"
    assert "FLWR_TELEMETRY_ENABLED=0" in dockerfile
    lock = (deploy / "requirements.lock").read_text().splitlines()
    assert all("==" in line for line in lock if line and not line.startswith("#"))
    pins = {line.split("==")[0].lower(): line.split("==")[1] for line in lock if "==" in line}
    import flwr
    import torch

    assert pins["flwr"] == flwr.__version__ and pins["torch"] == torch.__version__.split("+")[0]
    ignore = (root / ".dockerignore").read_text()
    assert ".venv" in ignore and ".git" in ignore


def test_the_staged_app_holds_the_fab_sources_and_packs_to_the_same_fab(tmp_path):
    """`flwr run` gets a folder with the FAB's files only (Flower walks every file under the folder it is given,
    .venv included, before applying fab-include); the FAB built from it is the one the checkout's own files make."""
    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import collect_files

    from consortium.deploy_local import staged_app_dir

    root = Path(__file__).resolve().parent.parent
    app = staged_app_dir(tmp_path / "app")
    assert sorted(p.name for p in app.iterdir()) == ["client", "pyproject.toml", "server", "shared_models"]
    # the checkout's own files for the same folders (what collect_files finds there, .venv left out of the walk)
    sources = {rel: path for top in ("client", "server", "shared_models")
               for rel, path in ((str(p.relative_to(root)), p) for p in (root / top).rglob("*") if p.is_file())}
    sources["pyproject.toml"] = root / "pyproject.toml"
    assert build_fab_from_files(collect_files(app))[0] == build_fab_from_files(sources)[0]
