"""SROS2 (DDS security) for multi-machine deployments: a keystore with one enclave per node.

``habc-sros2 KEYSTORE [--config-dir DIR] [--days N]`` writes, with ``openssl`` only (no
``ros2 security`` needed), the layout ``ros2 security create_keystore`` / ``create_enclave``
produce:

- ``KEYSTORE/public/ca.cert.pem`` (+ ``identity_ca`` / ``permissions_ca`` links) and
  ``KEYSTORE/private/ca.key.pem``: one ECDSA P-256 CA for identities and permissions;
- ``KEYSTORE/enclaves/governance.xml`` + ``governance.p7s``: every topic access-controlled
  and encrypted, unauthenticated participants refused;
- per node of ``config/graph.yaml`` an enclave ``KEYSTORE/enclaves/habc/<node>/`` with its
  identity (``cert.pem``, ``key.pem``) and ``permissions.xml`` + ``permissions.p7s`` (signed by
  the CA) made from the node's ``interfaces:`` in the graph description.

The permissions grant exactly those interfaces (plus the standard ones every ROS node has), so
only the arbiter may publish the driver's command topic, only the learner may call the
announce service and only the driver may publish joint states. Run a node in its enclave with
``ROS_SECURITY_ENABLE=true ROS_SECURITY_STRATEGY=Enforce ROS_SECURITY_KEYSTORE=KEYSTORE``
and ``--ros-args --enclave /habc/<node>``. Private keys never leave the machine that makes
them: copy each enclave folder to the machine that runs its node.

Pure apart from :func:`create_keystore` (which runs ``openssl``): :func:`node_rules` and
:func:`permissions_xml` derive everything from the graph description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from habc_learner.bringup import Graph, load_graph

ENCLAVE_ROOT = "/habc"
PARAMETER_SERVICES = (
    "describe_parameters",
    "get_parameter_types",
    "get_parameters",
    "list_parameters",
    "set_parameters",
    "set_parameters_atomically",
    "get_type_description",
)
LIFECYCLE_SERVICES = (
    "change_state",
    "get_state",
    "get_available_states",
    "get_available_transitions",
    "get_transition_graph",
)
INTERFACE_KINDS = ("publish", "subscribe", "serve", "call")


def enclave_of(node: str) -> str:
    """The enclave path of a graph node: ``/habc/<node>``."""
    return f"{ENCLAVE_ROOT}/{node}"


def _absolute(name: str, node: str) -> str:
    if name.startswith("~/"):
        return f"/{node}/{name[2:]}"
    if not name.startswith("/"):
        raise ValueError(f"node {node!r}: interface {name!r} must start with '/' or '~/'")
    return name


@dataclass(frozen=True)
class NodeRules:
    """What one node may do, in DDS topic names (``rt/``, ``rq/…Request``, ``rr/…Reply``)."""

    node: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def node_rules(node: Mapping[str, Any]) -> NodeRules:
    """The DDS publish/subscribe rules of one graph node (its ``interfaces:`` plus the
    standard interfaces of every ROS node, and the lifecycle ones when ``lifecycle: true``).

    ROS topic ``/a/b`` is DDS topic ``rt/a/b``; a service ``/s`` is the request topic
    ``rq/sRequest`` and the reply topic ``rr/sReply``: its server subscribes requests and
    publishes replies, a client the other way round.
    """
    name = str(node["name"])
    spec = dict(node.get("interfaces") or {})
    unknown = sorted(set(spec) - {*INTERFACE_KINDS, "lifecycle"})
    if unknown:
        raise ValueError(
            f"node {name!r}: unknown interface kinds {unknown}; kinds: {INTERFACE_KINDS}"
        )
    lists = {k: [_absolute(str(v), name) for v in spec.get(k) or ()] for k in INTERFACE_KINDS}
    publish = {"/rosout", "/parameter_events", *lists["publish"]}
    subscribe = set(lists["subscribe"])
    serve = {f"/{name}/{s}" for s in PARAMETER_SERVICES} | set(lists["serve"])
    if spec.get("lifecycle"):
        serve |= {f"/{name}/{s}" for s in LIFECYCLE_SERVICES}
        publish.add(f"/{name}/transition_event")
    pub = {f"rt{t}" for t in publish} | {"ros_discovery_info"}
    sub = {f"rt{t}" for t in subscribe} | {"ros_discovery_info"}
    for srv in serve:
        sub.add(f"rq{srv}Request")
        pub.add(f"rr{srv}Reply")
    for srv in lists["call"]:
        pub.add(f"rq{srv}Request")
        sub.add(f"rr{srv}Reply")
    return NodeRules(name, tuple(sorted(pub)), tuple(sorted(sub)))


def graph_rules(graph: Graph) -> dict[str, NodeRules]:
    """Rules of every node the graph can start (whatever the arguments)."""
    return {str(n["name"]): node_rules(n) for n in graph.nodes}


def _topics(tag: str, topics: Iterable[str]) -> str:
    items = "".join(f"\n            <topic>{escape(t)}</topic>" for t in topics)
    return f"\n        <{tag}>\n          <topics>{items}\n          </topics>\n        </{tag}>"


def permissions_xml(rules: NodeRules, not_before: dt.datetime, not_after: dt.datetime) -> str:
    """The OMG DDS-Security permissions document of one enclave (default DENY)."""
    enclave = enclave_of(rules.node)
    fmt = "%Y-%m-%dT%H:%M:%S"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:noNamespaceSchemaLocation="http://www.omg.org/spec/DDS-SECURITY/20170901/omg_shared_ca_permissions.xsd">
  <permissions>
    <grant name="{escape(enclave)}">
      <subject_name>CN={escape(enclave)}</subject_name>
      <validity>
        <not_before>{not_before.strftime(fmt)}</not_before>
        <not_after>{not_after.strftime(fmt)}</not_after>
      </validity>
      <allow_rule>
        <domains>
          <id_range>
            <min>0</min>
            <max>232</max>
          </id_range>
        </domains>{_topics("publish", rules.publish)}{_topics("subscribe", rules.subscribe)}
      </allow_rule>
      <default>DENY</default>
    </grant>
  </permissions>
</dds>
"""


GOVERNANCE_XML = """<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" \
xsi:noNamespaceSchemaLocation="http://www.omg.org/spec/DDS-SECURITY/20170901/omg_shared_ca_governance.xsd">
  <domain_access_rules>
    <domain_rule>
      <domains>
        <id_range>
          <min>0</min>
          <max>232</max>
        </id_range>
      </domains>
      <allow_unauthenticated_participants>false</allow_unauthenticated_participants>
      <enable_join_access_control>true</enable_join_access_control>
      <discovery_protection_kind>ENCRYPT</discovery_protection_kind>
      <liveliness_protection_kind>ENCRYPT</liveliness_protection_kind>
      <rtps_protection_kind>SIGN</rtps_protection_kind>
      <topic_access_rules>
        <topic_rule>
          <topic_expression>*</topic_expression>
          <enable_discovery_protection>true</enable_discovery_protection>
          <enable_liveliness_protection>true</enable_liveliness_protection>
          <enable_read_access_control>true</enable_read_access_control>
          <enable_write_access_control>true</enable_write_access_control>
          <metadata_protection_kind>ENCRYPT</metadata_protection_kind>
          <data_protection_kind>ENCRYPT</data_protection_kind>
        </topic_rule>
      </topic_access_rules>
    </domain_rule>
  </domain_access_rules>
</dds>
"""


def _openssl(*args: str, cwd: Path | None = None) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


def _sign(ca: Path, key: Path, document: Path) -> None:
    """S/MIME-sign ``document`` into ``<document>.p7s`` (what DDS-Security reads)."""
    _openssl(
        "smime", "-sign", "-text", "-in", str(document), "-out",
        str(document.with_suffix(".p7s")), "-signer", str(ca), "-inkey", str(key),
    )  # fmt: skip


def create_keystore(keystore: Path, graph: Graph, days: int = 3650) -> list[Path]:
    """Create (or complete) ``keystore`` for every node of ``graph``; returns the enclave
    folders. An existing CA is reused, so enclaves added later trust the same CA."""
    if shutil.which("openssl") is None:
        raise RuntimeError("habc-sros2 needs the openssl command (apt install openssl)")
    public, private = keystore / "public", keystore / "private"
    enclaves = keystore / "enclaves"
    for folder in (public, private, enclaves):
        folder.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = public / "ca.cert.pem", private / "ca.key.pem"
    if not ca_cert.exists():
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key))
        ca_key.chmod(0o600)
        _openssl(
            "req", "-new", "-x509", "-sha256", "-days", str(days), "-key", str(ca_key),
            "-out", str(ca_cert), "-subj", "/CN=habc_sros2_ca",
        )  # fmt: skip
    for role in ("identity_ca", "permissions_ca"):
        for folder, src in ((public, ca_cert), (private, ca_key)):
            link = folder / f"{role}.{'cert' if folder is public else 'key'}.pem"
            if not link.exists():
                link.symlink_to(src.name)
    governance = enclaves / "governance.xml"
    governance.write_text(GOVERNANCE_XML)
    _sign(ca_cert, ca_key, governance)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
    made = []
    for rules in graph_rules(graph).values():
        enclave = enclave_of(rules.node)
        folder = enclaves / enclave.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        key, csr, cert = folder / "key.pem", folder / "req.pem", folder / "cert.pem"
        if not key.exists():
            _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
            key.chmod(0o600)
        subject = "/CN=" + enclave.replace("/", "\\/")  # "/" inside a value is escaped
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", subject)
        _openssl(
            "x509", "-req", "-sha256", "-days", str(days), "-in", str(csr), "-CA", str(ca_cert),
            "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        )  # fmt: skip
        csr.unlink()
        for name in ("identity_ca.cert.pem", "permissions_ca.cert.pem"):
            (folder / name).unlink(missing_ok=True)
            shutil.copyfile(ca_cert, folder / name)
        shutil.copyfile(governance.with_suffix(".p7s"), folder / "governance.p7s")
        permissions = folder / "permissions.xml"
        permissions.write_text(permissions_xml(rules, now, now + dt.timedelta(days=days)))
        _sign(ca_cert, ca_key, permissions)
        made.append(folder)
    return made


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="habc-sros2", description=__doc__.split("\n\n")[0])
    p.add_argument("keystore", type=Path, help="keystore folder (created or completed)")
    p.add_argument("--config-dir", type=Path, default=None, help="folder of graph.yaml")
    p.add_argument("--days", type=int, default=3650, help="validity of certificates")
    args = p.parse_args(argv)
    try:
        graph = load_graph(args.config_dir)
        made = create_keystore(args.keystore, graph, args.days)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"habc-sros2: error: {exc}", file=sys.stderr)
        return 2
    for folder in made:
        print(f"habc-sros2: enclave {folder.relative_to(args.keystore / 'enclaves')}")
    print(
        f"habc-sros2: keystore {args.keystore}: run each node with ROS_SECURITY_ENABLE=true "
        f"ROS_SECURITY_STRATEGY=Enforce ROS_SECURITY_KEYSTORE={args.keystore.resolve()} and "
        "--ros-args --enclave /habc/<node>"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
