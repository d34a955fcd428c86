"""SROS2: the keystore habc-sros2 makes, its permissions against the graph description and
against the running nodes, and (where the DDS has security plugins) their enforcement."""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from habc_learner.bringup import load_graph
from habc_learner.sros2 import create_keystore, enclave_of, graph_rules
from tests.conftest import REPO_ROOT

CONFIG = REPO_ROOT / "config"
FILES = (
    "cert.pem",
    "key.pem",
    "permissions.xml",
    "permissions.p7s",
    "governance.p7s",
    "identity_ca.cert.pem",
    "permissions_ca.cert.pem",
)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


def read_permissions(path: Path) -> tuple[str, set[str], set[str]]:
    """``(subject, publish topics, subscribe topics)`` of a DDS permissions document."""
    grant = ET.parse(path).getroot().find("permissions/grant")
    assert grant is not None and grant.findtext("default") == "DENY"
    rule = grant.find("allow_rule")
    assert rule is not None and grant.find("deny_rule") is None

    def topics(tag: str) -> set[str]:
        return {t.text or "" for t in rule.findall(f"{tag}/topics/topic")}

    return grant.findtext("subject_name") or "", topics("publish"), topics("subscribe")


def allowed(topic: str, patterns: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(topic, p) for p in patterns)


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    ks = tmp_path_factory.mktemp("sros2") / "keystore"
    create_keystore(ks, load_graph(CONFIG), days=30)
    return ks


def _openssl_ok(*args: str) -> bool:
    return subprocess.run(["openssl", *args], capture_output=True, check=False).returncode == 0


@needs_openssl
def test_one_signed_enclave_per_graph_node(keystore: Path) -> None:
    graph = load_graph(CONFIG)
    ca = keystore / "public" / "ca.cert.pem"
    names = [n["name"] for n in graph.nodes]
    assert "joy" in names and "learner" in names  # every node the graph can start
    for name in names:
        folder = keystore / "enclaves" / enclave_of(name).lstrip("/")
        for file in FILES:
            assert (folder / file).is_file(), folder / file
        assert oct((folder / "key.pem").stat().st_mode & 0o777) == "0o600"
        assert _openssl_ok("verify", "-CAfile", str(ca), str(folder / "cert.pem"))
        assert _openssl_ok("smime", "-verify", "-in", str(folder / "permissions.p7s"),
                           "-CAfile", str(ca), "-out", os.devnull)  # fmt: skip
        subject = subprocess.run(
            ["openssl", "x509", "-in", str(folder / "cert.pem"), "-noout", "-subject"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert subject.strip().endswith(enclave_of(name)), subject
        assert read_permissions(folder / "permissions.xml")[0] == f"CN={enclave_of(name)}"
    # a tampered permissions file no longer verifies
    learner = keystore / "enclaves" / "habc" / "learner"
    tampered = keystore.parent / "tampered.p7s"
    text = (learner / "permissions.p7s").read_text()
    tampered.write_text(text.replace("announce_checkpointRequest", "executed_command"))
    assert not _openssl_ok("smime", "-verify", "-in", str(tampered), "-CAfile", str(ca),
                           "-out", os.devnull)  # fmt: skip


@needs_openssl
def test_permission_files_match_the_graph_description(keystore: Path) -> None:
    """Each enclave's signed permissions are exactly its node's rules from graph.yaml."""
    for name, rules in graph_rules(load_graph(CONFIG)).items():
        path = keystore / "enclaves" / enclave_of(name).lstrip("/") / "permissions.xml"
        _, pub, sub = read_permissions(path)
        assert pub == set(rules.publish), name
        assert sub == set(rules.subscribe), name


@needs_openssl
def test_who_may_move_the_arm(keystore: Path) -> None:
    perms = {
        d.name: read_permissions(d / "permissions.xml")
        for d in (keystore / "enclaves" / "habc").iterdir()
    }

    def publishers(topic: str) -> set[str]:
        return {n for n, (_, pub, _) in perms.items() if allowed(topic, pub)}

    assert publishers("rt/habc/executed_command") == {"intervention_arbiter"}
    assert publishers("rq/habc/announce_checkpointRequest") == {"learner"}
    assert publishers("rt/joint_states") == {"arx_x5_driver"}
    assert publishers("rt/estop") == set()  # the e-stop button is a deployment's own enclave
    # the driver executes commands but never issues them
    assert allowed("rt/habc/executed_command", perms["arx_x5_driver"][2])


def test_a_node_whose_topics_change_loses_its_permission() -> None:
    """The rules come from the description: a topic not described is not permitted."""
    graph = load_graph(CONFIG)
    learner = next(n for n in graph.nodes if n["name"] == "learner")
    rules = graph_rules(graph)["learner"]
    assert "rt/habc/executed_command" not in rules.publish
    from habc_learner.sros2 import node_rules

    changed = dict(learner, interfaces={"call": [], "publish": ["/habc/executed_command"]})
    assert "rt/habc/executed_command" in node_rules(changed).publish
    assert "rq/habc/announce_checkpointRequest" not in node_rules(changed).publish
    with pytest.raises(ValueError, match="unknown interface kinds"):
        node_rules(dict(learner, interfaces={"publishes": ["/x"]}))


# -- against the running graph ------------------------------------------------------------
@pytest.fixture(scope="module")
def running_graph(
    ros_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[set[str], set[str]]]]:
    """Start the sim graph (learner included) and read each node's real interfaces, as DDS
    topic names: ``node -> (published, subscribed)``."""
    from tests.nodes.conftest import RosClient, make_checkpoint

    run = tmp_path_factory.mktemp("sros2_graph") / "run"
    ckpt = run / "checkpoints" / "step_000000100"
    make_checkpoint(ckpt)
    log = (run / "launch.log").open("w")
    proc = subprocess.Popen(
        ["habc-launch", f"run_dir:={run}", f"policy_checkpoint:={ckpt}"],
        env=ros_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = RosClient("sros2_introspection")
    expected = {str(n["name"]) for n in load_graph(CONFIG).nodes} - {"joy"}
    found: dict[str, tuple[set[str], set[str]]] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            client.spin_for(1.0)
            names = {n for n, _ in client.node.get_node_names_and_namespaces()}
            if expected <= names:
                client.spin_for(3.0)  # let every endpoint of those nodes be discovered
                break
        node = client.node
        for name in sorted(expected):
            pub = {f"rt{t}" for t, _ in node.get_publisher_names_and_types_by_node(name, "/")}
            sub = {f"rt{t}" for t, _ in node.get_subscriber_names_and_types_by_node(name, "/")}
            for srv, _ in node.get_service_names_and_types_by_node(name, "/"):
                sub.add(f"rq{srv}Request")
                pub.add(f"rr{srv}Reply")
            for srv, _ in node.get_client_names_and_types_by_node(name, "/"):
                pub.add(f"rq{srv}Request")
                sub.add(f"rr{srv}Reply")
            found[name] = (pub, sub)
        yield found
    finally:
        client.close()
        proc.send_signal(2)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.slow
def test_running_nodes_stay_inside_their_permissions(
    running_graph: dict[str, tuple[set[str], set[str]]],
) -> None:
    """Fails when a node's code publishes, subscribes, serves or calls anything its
    permissions (made from graph.yaml) do not allow: change the description with the code."""
    rules = graph_rules(load_graph(CONFIG))
    assert set(running_graph) == set(rules) - {"joy"}
    for name, (pub, sub) in running_graph.items():
        assert pub, f"{name} was not discovered"
        extra_pub = sorted(t for t in pub if not allowed(t, set(rules[name].publish)))
        extra_sub = sorted(t for t in sub if not allowed(t, set(rules[name].subscribe)))
        assert not extra_pub and not extra_sub, (name, extra_pub, extra_sub)


@pytest.mark.ros
def test_enforced_permissions_at_runtime(ros_env: dict[str, str], keystore: Path) -> None:
    """Where the DDS has security plugins: a node in the learner's enclave cannot publish the
    driver's command topic. The Fast DDS of the PyPI wheels is built without them."""
    env = dict(
        ros_env,
        ROS_SECURITY_ENABLE="true",
        ROS_SECURITY_STRATEGY="Enforce",
        ROS_SECURITY_KEYSTORE=str(keystore),
        ROS_SECURITY_ENCLAVE_OVERRIDE="/habc/learner",
    )
    probe = """
import rclpy
from habc_msgs.msg import ExecutedCommand
rclpy.init()
try:
    node = rclpy.create_node("learner")
except Exception as exc:
    print("NODE_FAILED", exc)
    raise SystemExit(3)
print("NODE_OK")
try:
    node.create_publisher(ExecutedCommand, "/habc/executed_command", 10)
    print("CREATED")
except Exception as exc:
    print("REFUSED", exc)
"""
    done = subprocess.run(
        ["python", "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    text = done.stdout + done.stderr
    lowered = text.lower()
    if "security libraries" in lowered or "security is disabled" in lowered:
        line = next(ln for ln in text.splitlines() if "security" in ln.lower())
        pytest.skip(f"this DDS has no security plugins: {line.strip()}")
    assert "NODE_OK" in text, text  # the learner's own enclave admits it ...
    assert "REFUSED" in text and "CREATED" not in text, text  # ... but not on this topic
