"""Each pod of the rendered KubeEdge overlays against its namespace's Pod Security level.

The Kubernetes Pod Security Standards (v1.30) ``baseline`` and ``restricted`` rules are written
out below, since no admission controller runs here; the pods come from ``kubectl kustomize``
of compose/kubeedge/overlays/{cpu,gpu}. A namespace enforcing ``privileged`` must say why
(namespace.yaml), and its pods may go beyond ``baseline`` by host access alone.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.test_deploy_files import _pod_specs, render

LEVELS = ("privileged", "baseline", "restricted")
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]


def baseline_violations(pod: dict[str, Any]) -> list[str]:
    """Rules of the ``baseline`` level the pod breaks (empty: admitted)."""
    out = [f"{k}" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
    out += [f"hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v]
    psc = pod.get("securityContext", {})
    out += [f"sysctl {s['name']}" for s in psc.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS]
    contexts = [("pod", psc)] + [(c["name"], c.get("securityContext", {})) for c in _containers(pod)]
    for name, sc in contexts:
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            out.append(f"{name}: seccomp Unconfined")
        if sc.get("seLinuxOptions", {}).get("type", "") not in SELINUX_TYPES:
            out.append(f"{name}: seLinux type")
        if sc.get("seLinuxOptions", {}).get("user") or sc.get("seLinuxOptions", {}).get("role"):
            out.append(f"{name}: seLinux user/role")
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            out.append(f"{name}: appArmor Unconfined")
        if sc.get("windowsOptions", {}).get("hostProcess"):
            out.append(f"{name}: windows hostProcess")
    for c in _containers(pod):
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
        extra = set(sc.get("capabilities", {}).get("add", [])) - BASELINE_CAPS
        out += [f"{c['name']}: capability {cap}" for cap in sorted(extra)]
        out += [f"{c['name']}: hostPort {p['hostPort']}" for p in c.get("ports", []) if p.get("hostPort")]
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{c['name']}: procMount")
    return out


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Rules of the ``restricted`` level (which includes ``baseline``) the pod breaks."""
    out = baseline_violations(pod)
    out += [f"volume type of {v['name']}" for v in pod.get("volumes", [])
            if not (set(v) - {"name"}) <= RESTRICTED_VOLUMES]
    psc = pod.get("securityContext", {})
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser 0")
    for c in _containers(pod):
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation not false")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot not true")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccomp not RuntimeDefault/Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities not dropping ALL")
        out += [f"{name}: adds {cap}" for cap in caps.get("add", []) if cap != "NET_BIND_SERVICE"]
    return out


def violations(pod: dict[str, Any], level: str) -> list[str]:
    if level == "privileged":
        return []
    return baseline_violations(pod) if level == "baseline" else restricted_violations(pod)


def _levels(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in docs if d["kind"] == "Namespace"}


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_pod_is_admitted_by_its_namespace_level(overlay: str) -> None:
    docs = render(overlay)
    namespaces = _levels(docs)
    pods = _pod_specs(docs)
    expected = {("Job", "kafka-init"), ("Deployment", "trainer"), ("DaemonSet", "edge-agent"),
                ("Deployment", "archive"), ("Deployment", "console")}
    assert expected <= {(d["kind"], d["metadata"]["name"]) for d, _ in pods}
    for d, pod in pods:
        labels = namespaces[d["metadata"]["namespace"]]
        level = labels["pod-security.kubernetes.io/enforce"]
        assert level in LEVELS
        assert violations(pod, level) == [], (d["metadata"]["name"], level)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_a_privileged_namespace_is_used_for_host_access_alone(overlay: str) -> None:
    docs = render(overlay)
    namespaces = _levels(docs)
    privileged = {n for n, labels in namespaces.items() if labels["pod-security.kubernetes.io/enforce"] == "privileged"}
    assert privileged == {"edge-offload"}  # the DC namespace stays restricted
    assert namespaces["edge-offload-dc"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespaces["edge-offload"]["pod-security.kubernetes.io/audit"] == "baseline"  # each use logged
    for d, pod in _pod_specs(docs):
        if d["metadata"]["namespace"] not in privileged:
            continue
        found = baseline_violations(pod)
        assert found and all(v == "hostNetwork" or v.startswith("hostPath volume") for v in found), found
        # beyond restricted: host access, and the init container that chowns the hostPath as root
        init = {c["name"] for c in pod.get("initContainers", [])}
        rest = [v for v in restricted_violations(pod) if v not in found and not v.startswith("volume type")]
        assert all(v.split(":")[0] in init for v in rest), rest
        assert all(not c["securityContext"].get("privileged") for c in _containers(pod))


def _good_pod() -> dict[str, Any]:
    docs = render("cpu")
    return copy.deepcopy(next(pod for d, pod in _pod_specs(docs) if d["metadata"]["name"] == "trainer"))


@pytest.mark.parametrize(("mutate", "level", "expect"), [
    (lambda p: p.update(hostNetwork=True), "baseline", "hostNetwork"),
    (lambda p: p.update(hostPID=True), "baseline", "hostPID"),
    (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/var"}}), "baseline", "hostPath volume h"),
    (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "baseline", "trainer: privileged"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "baseline",
     "trainer: capability SYS_ADMIN"),
    (lambda p: p["containers"][0]["ports"].append({"containerPort": 1, "hostPort": 1}), "baseline",
     "trainer: hostPort 1"),
    (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "baseline",
     "pod: seccomp Unconfined"),
    (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "restricted",
     "trainer: allowPrivilegeEscalation not false"),
    (lambda p: p["securityContext"].pop("runAsNonRoot"), "restricted", "trainer: runAsNonRoot not true"),
    (lambda p: p["containers"][0]["securityContext"].update(runAsUser=0), "restricted", "trainer: runAsUser 0"),
    (lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "restricted",
     "trainer: capabilities not dropping ALL"),
    (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]), "restricted",
     "trainer: adds CHOWN"),
    (lambda p: p["securityContext"].pop("seccompProfile"), "restricted",
     "trainer: seccomp not RuntimeDefault/Localhost"),
    (lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}), "restricted",
     "volume type of n"),
])
def test_the_checker_catches_each_rule(mutate: Any, level: str, expect: str) -> None:
    pod = _good_pod()
    assert violations(pod, "restricted") == []
    mutate(pod)
    assert expect in violations(pod, level)
    assert violations(pod, "privileged") == []
