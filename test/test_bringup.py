"""Lifecycle bring-up: configure all, activate all, undo on the first failure (no processes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cobot_hybrid_ros.bringup import (
    ACTIVE,
    FINALIZED,
    INACTIVE,
    TRANSITIONS,
    UNCONFIGURED,
    BringupConfig,
    BringupError,
    StepResult,
    bring_up,
)

NEXT = {('configure', UNCONFIGURED): INACTIVE, ('activate', INACTIVE): ACTIVE,
        ('deactivate', ACTIVE): INACTIVE, ('cleanup', INACTIVE): UNCONFIGURED}


@dataclass
class FakeNodes:
    """Lifecycle nodes in memory: states, refusals, and every request in order."""

    states: dict[str, int | None]
    refuse: dict[tuple[str, str], str] = field(default_factory=dict)
    absent: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def wait_ready(self, node: str) -> bool:
        return node not in self.absent

    def state(self, node: str) -> int | None:
        return self.states[node]

    def change(self, node: str, transition: str) -> StepResult:
        self.calls.append((node, transition))
        if (node, transition) in self.refuse:
            return StepResult(False, self.refuse[(node, transition)])
        self.states[node] = NEXT[(transition, self.states[node])]
        return StepResult(True)


def test_the_constants_are_lifecycle_msgs_own() -> None:
    from lifecycle_msgs.msg import State, Transition

    assert (UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED) == (
        State.PRIMARY_STATE_UNCONFIGURED, State.PRIMARY_STATE_INACTIVE,
        State.PRIMARY_STATE_ACTIVE, State.PRIMARY_STATE_FINALIZED)
    assert TRANSITIONS == {'configure': Transition.TRANSITION_CONFIGURE,
                           'cleanup': Transition.TRANSITION_CLEANUP,
                           'activate': Transition.TRANSITION_ACTIVATE,
                           'deactivate': Transition.TRANSITION_DEACTIVATE}


def test_each_node_is_up_before_the_next_is_started() -> None:
    # The safety monitor first, active (holding a stop) while the detector loads its model.
    nodes = FakeNodes({'a': UNCONFIGURED, 'b': UNCONFIGURED, 'c': UNCONFIGURED})
    log = bring_up(nodes, ['a', 'b', 'c'])
    assert nodes.calls == [('a', 'configure'), ('a', 'activate'), ('b', 'configure'),
                           ('b', 'activate'), ('c', 'configure'), ('c', 'activate')]
    assert set(nodes.states.values()) == {ACTIVE}
    assert log[0] == 'a: configured' and log[-1] == 'c: activated'


def test_a_node_already_up_is_left_as_it_is() -> None:
    nodes = FakeNodes({'a': ACTIVE, 'b': INACTIVE})
    log = bring_up(nodes, ['a', 'b'])
    assert nodes.calls == [('b', 'activate')]
    assert 'a: already active, configure skipped' in log


def test_a_refused_configure_undoes_the_others_and_starts_nothing() -> None:
    nodes = FakeNodes({'safety': UNCONFIGURED, 'detector': UNCONFIGURED, 'bridge': UNCONFIGURED},
                      refuse={('detector', 'configure'): 'cannot load the model: no such file'})
    with pytest.raises(BringupError) as caught:
        bring_up(nodes, ['safety', 'detector', 'bridge'])
    message = str(caught.value)
    assert 'detector: configure failed: cannot load the model: no such file' in message
    assert 'undone: 2 step' in message and 'remaining nodes were not started' in message
    assert nodes.calls == [('safety', 'configure'), ('safety', 'activate'),
                           ('detector', 'configure'), ('safety', 'deactivate'),
                           ('safety', 'cleanup')]
    assert set(nodes.states.values()) == {UNCONFIGURED}


def test_a_refused_activate_deactivates_what_was_active_in_reverse() -> None:
    nodes = FakeNodes({'a': UNCONFIGURED, 'b': UNCONFIGURED},
                      refuse={('b', 'activate'): ''})
    with pytest.raises(BringupError, match='b: activate failed: no reason logged'):
        bring_up(nodes, ['a', 'b'])
    assert nodes.calls[-3:] == [('b', 'cleanup'), ('a', 'deactivate'), ('a', 'cleanup')]
    assert set(nodes.states.values()) == {UNCONFIGURED}


def test_a_node_that_undo_cannot_reach_is_named() -> None:
    nodes = FakeNodes({'a': UNCONFIGURED, 'b': UNCONFIGURED},
                      refuse={('b', 'configure'): 'bad', ('a', 'cleanup'): 'gone'})
    with pytest.raises(BringupError, match=r'could not undo a \(cleanup refused\)'):
        bring_up(nodes, ['a', 'b'])


@pytest.mark.parametrize(('nodes', 'needle'), [
    (FakeNodes({'a': UNCONFIGURED, 'b': UNCONFIGURED}, absent={'b'}), 'did not appear'),
    (FakeNodes({'a': UNCONFIGURED, 'b': None}), 'no answer to get_state'),
    (FakeNodes({'a': UNCONFIGURED, 'b': FINALIZED}), 'finalized'),
])
def test_unreachable_unanswering_or_finalized_nodes_stop_the_bring_up(nodes: FakeNodes,
                                                                      needle: str) -> None:
    with pytest.raises(BringupError, match=needle):
        bring_up(nodes, ['a', 'b'])
    assert all(state != ACTIVE for state in nodes.states.values())


@pytest.mark.parametrize(('overrides', 'needle'), [
    (dict(node_names=[]), 'node_names is empty'),
    (dict(node_names=['a', 'a']), 'twice'),
    (dict(service_timeout_s=0.0), 'service_timeout_s'),
])
def test_bad_manager_parameters_are_refused(overrides: dict, needle: str) -> None:
    with pytest.raises(BringupError, match=needle):
        BringupConfig(**overrides)
