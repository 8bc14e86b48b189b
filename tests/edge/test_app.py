"""The wiring: every graph edge.app builds declares who sends to whom, and an actor cannot
send along an edge that is not declared."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge import app, config
from edge.config import SupervisionConfig
from edge.errors import StartupError
from edge.runtime.actor import ActorContext, ActorHandle, EdgeActor
from edge.runtime.graph import ActorSpec, Runtime

REGISTRY = Path(__file__).resolve().parents[2] / "fixtures" / "registry.toml"


def _cfg(tmp_path: Path) -> config.Config:
    return config.from_mapping({
        "decoder": {"registry": str(REGISTRY)},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "commands": {"path": str(tmp_path / "commands.db")},
        "server": {"receiver": True, "bridge": True, "decoder": True, "sink": True},
    }, env={})


def test_the_gateway_graph_declares_every_edge_and_only_to_actors_it_has(tmp_path):
    specs = app.gateway_specs(_cfg(tmp_path))
    assert {s.name: s.sends_to for s in specs} == app.GATEWAY_EDGES
    demo = app.demo_specs(_cfg(tmp_path), str(tmp_path / "d.db"), REGISTRY.read_text(), None, EdgeActor.start)
    assert {s.name: s.sends_to for s in demo} == {
        "source": ("decoder",), "decoder": ("buffer",), "buffer": ("source", "uplink"), "uplink": ("buffer",)}


def test_the_server_graph_declares_that_its_actors_send_to_no_actor(tmp_path):
    specs = app.server_specs(_cfg(tmp_path), store=object())
    assert {s.name for s in specs} == {"sink", "stream_decoder", "receiver", "bridge"}
    assert all(s.sends_to == () for s in specs)


def test_a_send_along_an_undeclared_edge_is_refused():
    handles = {n: ActorHandle(n) for n in ("buffer", "source", "uplink")}
    ctx = ActorContext("buffer", handles, peers=frozenset({"uplink"}))
    assert ctx.peer("uplink") is handles["uplink"] and ctx.has_peer("uplink")
    assert not ctx.has_peer("source") and not ctx.has_peer("commands")
    with pytest.raises(KeyError, match="'buffer' has no edge to 'source'"):
        ctx.peer("source")


def test_edges_to_actors_outside_the_graph_stop_the_start():
    specs = [ActorSpec("a", EdgeActor.start, sends_to=("b",))]
    with pytest.raises(StartupError, match="'a' declares edges to actors not in the graph: b"):
        Runtime(specs, SupervisionConfig())


def test_every_broker_connection_of_the_server_has_a_client_id_of_its_own(tmp_path, monkeypatch):
    """Two connections with one client id take each other's session in turns (the broker
    drops the older one): the command actor once reused the bridge's through a late-bound
    variable in server_specs."""
    from edge.actors import bridge, dispatch, receiver

    seen: dict[str, str] = {}

    def capture(name: str, position: int):
        def start(ctx, *args):
            seen[name] = args[position]
        return start

    monkeypatch.setattr(receiver.UplinkReceiver, "start", capture("receiver", 3))
    monkeypatch.setattr(bridge.DirectBridge, "start", capture("bridge", 3))
    monkeypatch.setattr(dispatch.CommandActor, "start", capture("dispatch", 3))
    cfg = config.from_mapping({"server": {"receiver": True, "bridge": True, "decoder": False, "sink": False,
                                          "commands": True}}, env={})
    for spec in app.server_specs(cfg, store=object()):
        spec.start(None)
    assert set(seen) == {"receiver", "bridge", "dispatch"}
    assert len(set(seen.values())) == 3, seen
