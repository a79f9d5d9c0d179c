#!/usr/bin/env python3
"""Checks deploy/kubernetes offline (scripts/test runs it; a few seconds).

Renders the kustomize base with `kubectl kustomize`, validates every object against the
Kubernetes schema (kubernetes-validate, strict), then asserts on the rendered YAML the properties
the deployment promises, so that dropping one fails: non-root, read-only root filesystems,
grpc.health.v1 probes, only Envoy's port admitted, Envoy's admin on 127.0.0.1, the socket shared,
every file envoy.yaml names present in the pod, ConfigMaps within their size limits. Each
assertion is also shown to fail on a copy with its property removed. Finally, with ENVOY_BIN,
Envoy validates the pod's exact command line against the rendered files.

Usage: check-kubernetes.py  (from the repository root; kubectl and kubernetes-validate from .venv
or PATH)
"""

import base64
import copy as copy_module
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

BASE = "deploy/kubernetes"
# The oldest Kubernetes the base is meant for (native `sleep` preStop hooks are on by default
# from 1.30) and the newest schema kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
PUBLIC_PORT = 8080
SERVICE_PORT = 50051
ANNOTATION_LIMIT = 262144  # bytes of all annotations: client-side apply copies the object there
CONFIGMAP_LIMIT = 1048576  # bytes of data + binaryData


def tool(name):
    local = Path(".venv/bin") / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        sys.exit(f"check-kubernetes: {name} not found (scripts/lib/deps.sh ensure_kubernetes_tools)")
    return found


def render():
    out = subprocess.run([tool("kubectl"), "kustomize", BASE], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"check-kubernetes: kubectl kustomize {BASE} failed (above)")
    return out.stdout


class Rendered:
    def __init__(self, text):
        self.objects = [o for o in yaml.safe_load_all(text) if o]

    def all(self, kind):
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind):
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def pod(self):
        return self.one("Deployment")["spec"]["template"]

    def container(self, name):
        spec = self.pod["spec"]
        return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)

    def env(self, name):
        return {e["name"]: e.get("value") for e in self.container(name).get("env", [])}

    def envoy_version(self):
        return self.container("envoy")["image"].rsplit(":v", 1)[1]

    def envoy_overlay(self):
        """The bootstrap merged into envoy.yaml by --config-yaml."""
        args = self.container("envoy")["args"]
        return yaml.safe_load(args[args.index("--config-yaml") + 1])

    def configmap(self, prefix):
        found = [o for o in self.all("ConfigMap") if re.fullmatch(prefix + r"-[a-z0-9]{10}", o["metadata"]["name"])]
        assert len(found) == 1, f"expected one ConfigMap {prefix}-<hash>"
        return found[0]


def envoy_yaml():
    return yaml.safe_load(Path("envoy/envoy.yaml").read_text())


def check_objects_and_secrets(r):
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"]:
        r.one(kind)
    assert not r.all("Secret"), "no Secret may be rendered: secrets are created by the operator, never kept in git"
    for c in r.pod["spec"]["containers"]:
        for e in c.get("env", []):
            assert not re.search(r"KEY|SECRET|PASSWORD|DATABASE.*URL", e["name"]) or "value" not in e, f"{e['name']}: a secret in git"
    database = next(e for e in r.container("auth")["env"] if e["name"] == "DATABASE_URL")["valueFrom"]["secretKeyRef"]
    assert not database.get("optional"), "DATABASE_URL is required: without it each pod would use its own SQLite file"


def check_non_root(r):
    pod = r.pod["spec"]
    assert pod["securityContext"].get("runAsNonRoot") is True, "pod: runAsNonRoot"
    assert pod["securityContext"].get("runAsUser", 0) != 0, "pod: runAsUser must not be 0"
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        assert sc.get("runAsUser", pod["securityContext"]["runAsUser"]) != 0, f"{c['name']}: runs as root"
        assert sc.get("runAsNonRoot", True) is True, f"{c['name']}: runAsNonRoot"
        assert sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{c['name']}: capabilities not dropped"


def check_grpc_probes(r):
    auth = r.container("auth")
    env = r.env("auth")
    assert env.get("PORT") == str(SERVICE_PORT)
    # Probes come from the kubelet to the pod IP: a loopback HOST would fail them all.
    assert env.get("HOST") == "0.0.0.0", "HOST must admit the kubelet's probes"
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
        grpc = auth.get(probe, {}).get("grpc")
        assert grpc and grpc["port"] == SERVICE_PORT, f"auth: {probe} must be a grpc.health.v1 probe on {SERVICE_PORT}"
    # Readiness follows the database ("" goes NOT_SERVING without it); liveness must not, or a
    # database outage would restart every replica.
    assert auth["readinessProbe"]["grpc"].get("service", "") == ""
    assert auth["livenessProbe"]["grpc"].get("service") == "instachatico.auth.v1.AuthService"


def check_network_policy(r):
    policy = r.one("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == r.pod["metadata"]["labels"], "NetworkPolicy selects the pods"
    assert "Ingress" in policy["policyTypes"]
    metrics_port = int(r.pod["metadata"]["annotations"]["prometheus.io/port"])
    from_anyone = set()
    for rule in policy["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        assert ports, "an ingress rule without ports admits every port"
        if rule.get("from"):
            assert ports == {metrics_port}, f"only the metrics port may be admitted from chosen peers, not {ports}"
        else:
            from_anyone |= ports
    assert from_anyone == {PUBLIC_PORT}, f"only Envoy's {PUBLIC_PORT} may be open to all, not {from_anyone}"
    service_ports = {p["targetPort"] for p in r.one("Service")["spec"]["ports"]}
    envoy_ports = {p["name"]: p["containerPort"] for p in r.container("envoy")["ports"]}
    assert {envoy_ports.get(p, p) for p in service_ports} == {PUBLIC_PORT}, "the Service publishes Envoy's listener only"


def check_envoy_admin(r):
    overlay = r.envoy_overlay()
    admin = overlay["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1", "Envoy's admin must listen on 127.0.0.1 only"
    assert "admin" not in envoy_yaml(), "envoy/envoy.yaml has no admin: the cluster variant adds a loopback one"
    clusters = {c["name"]: c for c in overlay["static_resources"]["clusters"]}
    admin_cluster = clusters["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert admin_cluster["address"]["socket_address"] == admin
    annotations = r.pod["metadata"]["annotations"]
    assert annotations.get("prometheus.io/scrape") == "true"
    (listener,) = overlay["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == int(annotations["prometheus.io/port"])
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    to_admin = {rt["match"]["path"] for rt in routes if rt.get("route", {}).get("cluster") == "envoy_admin"}
    # Only read-only admin pages are reachable: never /logging, /quitquitquit, /drain_listeners...
    assert to_admin == {"/stats/prometheus", "/ready"}, f"admin paths exposed: {to_admin}"
    assert annotations["prometheus.io/path"] in to_admin
    for rt in routes:
        if "route" in rt:
            assert "path" in rt["match"], "admin and metrics routes match exact paths"
            methods = [h for h in rt["match"].get("headers", []) if h["name"] == ":method"]
            assert methods and methods[0]["string_match"] == {"exact": "GET"}, "metrics routes are GET only"
    assert routes[-1] == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
    assert r.env("auth").get("METRICS_ADDR", "").startswith("127.0.0.1:"), "the service's metrics stay on loopback"


def mounts_of(container):
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def check_socket_shared(r):
    env = r.env("auth")
    socket = Path(env["PROXY_SOCKET"])
    auth_mounts = mounts_of(r.container("auth"))
    volume = auth_mounts[str(socket.parent)]["name"]
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[volume], "the socket lives in an emptyDir"
    clusters = {c["name"]: c for c in envoy_yaml()["static_resources"]["clusters"]}
    # The API's socket, and the decisions' that the service binds beside it (authz.sock).
    for cluster, name in (("instachatico_auth", socket.name), ("instachatico_authz", "authz.sock")):
        pipe = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        pipe_path = Path(pipe["endpoint"]["address"]["pipe"]["path"])
        envoy = r.container("envoy")
        envoy_dir = str(Path(envoy["workingDir"]) / pipe_path.parent)
        assert mounts_of(envoy)[envoy_dir]["name"] == volume, f"Envoy must see {volume} at {envoy_dir}"
        assert pipe_path.name == name, f"{cluster}: {pipe_path.name} != {name}"


def envoy_files():
    """Every relative file envoy.yaml reads (direct responses, Lua, descriptor)."""
    text = Path("envoy/envoy.yaml").read_text()
    names = re.findall(r"filename: (envoy/[^ }]+)", text) + re.findall(r"proto_descriptor: (envoy/\S+)", text)
    assert names, "envoy.yaml names no files?"
    return sorted(set(names))


def check_envoy_files(r):
    envoy = r.container("envoy")
    workdir = Path(envoy["workingDir"])
    mounts = mounts_of(envoy)
    config = envoy["args"][envoy["args"].index("-c") + 1]
    pinned = re.search(r"^ENVOY_VERSION=(\S+)", Path("scripts/lib/deps.sh").read_text(), re.M)[1]
    assert r.envoy_version() == pinned, f"Envoy image {r.envoy_version()}, the tests use {pinned}"
    for name in [config] + envoy_files():
        path = workdir / name
        direct = mounts.get(str(path))
        in_dir = mounts.get(str(path.parent))
        assert direct or in_dir, f"{name}: not mounted in the Envoy container"
        if direct:
            assert direct["subPath"] == path.name
        else:
            # The directory filled by the init container from the image (Dockerfile).
            assert Path(name).parent == Path("envoy/swagger-ui"), f"{name}: unexpected directory mount"
    dockerfile = Path("Dockerfile").read_text()
    assert "COPY envoy/swagger-ui/ /usr/share/instachatico-auth/swagger-ui/" in dockerfile
    assert "/usr/share/instachatico-auth/swagger-ui/." in r.container("docs-assets")["command"]


def check_configmap_sizes(r):
    for cm in r.all("ConfigMap"):
        raw = sum(len(v.encode()) for v in cm.get("data", {}).values())
        raw += sum(len(v) * 3 // 4 for v in cm.get("binaryData", {}).values())
        assert raw < CONFIGMAP_LIMIT, f"{cm['metadata']['name']}: {raw} bytes, over a ConfigMap's 1 MiB"
        # What `kubectl apply` (client-side) stores in kubectl.kubernetes.io/last-applied-configuration.
        applied = len(json.dumps(cm, separators=(",", ":")).encode())
        assert applied < ANNOTATION_LIMIT - 4096, f"{cm['metadata']['name']}: {applied} bytes, too big for kubectl apply"
    for prefix in ("instachatico-auth-envoy", "instachatico-auth-envoy-docs"):
        for name, text in r.configmap(prefix)["data"].items():
            assert text == Path("envoy", name).read_text(), f"{name}: ConfigMap differs from envoy/"


def check_autoscaling(r):
    deployment = r.one("Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = r.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    for c in r.pod["spec"]["containers"]:
        assert c["resources"]["requests"].get("cpu"), f"{c['name']}: CPU utilisation needs a CPU request"
    pdb = r.one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"] == r.pod["metadata"]["labels"]
    assert hpa["spec"]["minReplicas"] >= 2, "with one replica the PDB would block every drain"


CHECKS = [
    check_objects_and_secrets,
    check_non_root,
    check_grpc_probes,
    check_network_policy,
    check_envoy_admin,
    check_socket_shared,
    check_envoy_files,
    check_configmap_sizes,
    check_autoscaling,
]


def _sc(name):
    return lambda r: r.container(name)["securityContext"]


def _drop(getter, key):
    return lambda r: getter(r).pop(key)


def _set(getter, key, value):
    return lambda r: getter(r).__setitem__(key, value)


def _unmount(container, path):
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != path]


def _setenv(container, name, value):
    container["env"] = [e for e in container["env"] if e["name"] != name] + [{"name": name, "value": value}]


def _admin_anywhere(r):
    args = r.container("envoy")["args"]
    i = args.index("--config-yaml") + 1
    args[i] = args[i].replace("address: 127.0.0.1, port_value: 9901 } }\n", "address: 0.0.0.0, port_value: 9901 } }\n", 1)


def _open_service_port(r):
    r.one("NetworkPolicy")["spec"]["ingress"][0]["ports"].append({"port": SERVICE_PORT, "protocol": "TCP"})


# Each property dropped in turn from a copy of the rendered objects: the check guarding it must
# fail, or it guards nothing.
MUTATIONS = [
    ("auth runs as root", _set(_sc("auth"), "runAsUser", 0), check_non_root),
    ("pod may run as root", _drop(lambda r: r.pod["spec"]["securityContext"], "runAsNonRoot"), check_non_root),
    ("envoy's root filesystem writable", _drop(_sc("envoy"), "readOnlyRootFilesystem"), check_non_root),
    ("init container's root filesystem writable", _set(_sc("docs-assets"), "readOnlyRootFilesystem", False), check_non_root),
    ("liveness probe by HTTP", _set(lambda r: r.container("auth"), "livenessProbe", {"tcpSocket": {"port": SERVICE_PORT}}), check_grpc_probes),
    ("readiness probe dropped", _drop(lambda r: r.container("auth"), "readinessProbe"), check_grpc_probes),
    ("service on loopback", lambda r: _setenv(r.container("auth"), "HOST", "127.0.0.1"), check_grpc_probes),
    ("service port admitted", _open_service_port, check_network_policy),
    ("metrics port open to all", lambda r: r.one("NetworkPolicy")["spec"]["ingress"][1].pop("from"), check_network_policy),
    ("admin on every address", _admin_anywhere, check_envoy_admin),
    ("socket volume not shared", lambda r: _unmount(r.container("envoy"), "/srv/data"), check_socket_shared),
    ("a ConfigMap file not mounted", lambda r: r.container("envoy")["volumeMounts"].pop(0), check_envoy_files),
    ("DATABASE_URL optional", lambda r: _setenv(r.container("auth"), "DATABASE_URL", "postgres://u:p@db/auth"), check_objects_and_secrets),
    ("replicas pinned", _set(lambda r: r.one("Deployment")["spec"], "replicas", 3), check_autoscaling),
]


def self_test(r):
    for what, mutate, check in MUTATIONS:
        copy = Rendered.__new__(Rendered)
        copy.objects = copy_module.deepcopy(r.objects)
        mutate(copy)
        try:
            check(copy)
        except (AssertionError, KeyError, StopIteration, ValueError):
            continue
        raise AssertionError(f"{check.__name__} does not notice: {what}")


def validate_schema(text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        for version in KUBERNETES_VERSIONS:
            subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, f.name], check=True)


def validate_envoy(r):
    """Envoy checks the pod's command line against the pod's files (ConfigMaps as rendered)."""
    envoy_bin = os.environ.get("ENVOY_BIN")
    if not envoy_bin:
        if os.environ.get("CI") == "true":
            raise AssertionError("ENVOY_BIN not set")
        print("check-kubernetes: ENVOY_BIN not set, Envoy validation skipped", file=sys.stderr)
        return
    envoy = r.container("envoy")
    with tempfile.TemporaryDirectory() as root:
        for mount in envoy["volumeMounts"]:
            if not mount["mountPath"].startswith(envoy["workingDir"] + "/"):
                continue
            path = Path(root) / Path(mount["mountPath"]).relative_to(envoy["workingDir"])
            volume = next(v for v in r.pod["spec"]["volumes"] if v["name"] == mount["name"])
            if "configMap" in volume:
                cm = next(o for o in r.all("ConfigMap") if o["metadata"]["name"] == volume["configMap"]["name"])
                path.parent.mkdir(parents=True, exist_ok=True)
                if mount["subPath"] in cm.get("data", {}):
                    path.write_text(cm["data"][mount["subPath"]])
                else:
                    path.write_bytes(base64.b64decode(cm["binaryData"][mount["subPath"]]))
            elif mount["name"] == "swagger-ui":
                shutil.copytree("envoy/swagger-ui", path)
            else:
                path.mkdir(parents=True, exist_ok=True)
        cmd = [envoy_bin] + envoy["args"] + ["--mode", "validate"]
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        assert out.returncode == 0, f"envoy --mode validate failed:\n{out.stdout}{out.stderr}"


def main():
    os.chdir(Path(__file__).resolve().parents[2])
    text = render()
    passed = failed = 0
    try:
        validate_schema(text)
        passed += 1
    except subprocess.CalledProcessError:
        failed += 1
        print("FAIL validate_schema: kubernetes-validate refused the rendered objects (above)", file=sys.stderr)
    r = Rendered(text)
    for check in CHECKS + [self_test, validate_envoy]:
        try:
            check(r)
            passed += 1
        except (AssertionError, KeyError, StopIteration, ValueError) as e:
            failed += 1
            print(f"FAIL {check.__name__}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"kubernetes: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
