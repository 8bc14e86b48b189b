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
