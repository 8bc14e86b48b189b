"""What each actor takes: its ``receives`` declaration agrees with the ``match`` in its
``handle``, and anything else is refused once, by the actor base."""

from __future__ import annotations

import ast
import inspect
import queue
import textwrap

import pytest

from edge.actors import bridge, buffer, commands, consuming, decoder, dispatch, market, receiver, source, uplink
from edge.runtime.actor import ActorContext, ActorHandle, EdgeActor, UnknownMessage
from edge.tools import demo

ACTORS = [buffer.Buffer, consuming.ConsumingActor, commands.CommandRouter, decoder.Decoder,
          source.MqttSource, receiver.UplinkReceiver, bridge.DirectBridge, uplink.Uplink, demo.DemoSource,
          market.MarketActor, dispatch.CommandActor]


def matched_types(cls: type) -> set[str]:
    """The class names the ``match`` statements of ``cls.handle`` test against."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.handle)))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.MatchClass):
            cls_node = node.cls
            names.add(cls_node.attr if isinstance(cls_node, ast.Attribute) else cls_node.id)
    return names


@pytest.mark.parametrize("cls", ACTORS, ids=lambda c: c.__name__)
def test_an_actor_declares_exactly_the_messages_its_handle_matches(cls):
    assert cls.receives, f"{cls.__name__} declares no messages"
    assert {t.__name__ for t in cls.receives} == matched_types(cls)


def test_every_actor_of_the_project_is_checked():
    def subclasses(cls: type) -> set[type]:
        return {s for c in cls.__subclasses__() for s in {c} | subclasses(c)}
    declaring = {c for c in subclasses(EdgeActor) if "receives" in vars(c) and c.__module__.startswith("edge.")}
    assert declaring <= set(ACTORS)


def test_the_check_fails_when_a_match_arm_is_not_declared():
    class Forgetful(EdgeActor):
        receives = (int,)

        def handle(self, message):
            match message:
                case int():
                    return 1
                case str():
                    return 2

    assert {t.__name__ for t in Forgetful.receives} != matched_types(Forgetful)


class Echo(EdgeActor):
    receives = (str,)

    def handle(self, message):
        match message:
            case str():
                return message.upper()


def test_a_message_an_actor_does_not_take_is_refused_by_the_base_and_the_actor_keeps_running():
    ref = Echo.start(ActorContext("echo", {"echo": ActorHandle("echo")}))
    try:
        assert ref.ask("hi", timeout=5) == "HI"
        with pytest.raises(UnknownMessage, match="'echo' got a message it does not take: 42"):
            ref.ask(42, timeout=5)
        assert ref.ask("still", timeout=5) == "STILL"
    finally:
        ref.stop()


def test_a_told_unknown_message_crashes_the_actor_for_its_supervisor():
    crashes: queue.Queue[BaseException | None] = queue.Queue()
    ref = Echo.start(ActorContext("echo", {"echo": ActorHandle("echo")}, on_crash=lambda name, exc: crashes.put(exc)))
    ref.tell(3.5)
    assert isinstance(crashes.get(timeout=5), UnknownMessage)  # pykka stops it before on_failure
    assert not ref.is_alive()
