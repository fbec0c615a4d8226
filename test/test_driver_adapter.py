"""The driver adapter's core: the fail-safe rule, the heartbeat, the service calls (no ROS)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cobot_hybrid_perception.driver_adapter import (
    KEEP_ABANDONED,
    RESUME,
    STOP,
    AdapterConfig,
    DriverAdapter,
    Reason,
    ServiceCalls,
    Step,
    tick_period_s,
)
from cobot_hybrid_perception.errors import ConfigError

CFG = AdapterConfig()
TIMEOUT = CFG.input_timeout_s


def running(adapter: DriverAdapter, now: float, scale: float = 1.0) -> Step:
    """Feed fresh, valid input: ``scale`` and no protective stop; return the step that acted."""
    first = adapter.on_protective_stop(now, False)
    second = adapter.on_speed_scale(now, scale)
    assert first.call is None or second.call is None   # (never two calls in flight)
    return first if first.call is not None or first.abandon is not None else second


def started(output: str, **changes: object) -> DriverAdapter:
    """A service adapter whose driver has confirmed the stop it gets at start."""
    adapter = DriverAdapter(AdapterConfig(output=output, **changes))
    first = adapter.tick(0.0)
    adapter.answered(0.0, first.call.id, True)
    return adapter


def confirm(adapter: DriverAdapter, now: float, step: Step) -> Step:
    """Answer the step's call with success."""
    assert step.call is not None, step
    return adapter.answered(now, step.call.id, True)


# --- the fail-safe rule (every output) ---------------------------------------------------------

@pytest.mark.parametrize(('output', 'stop_request'), [
    ('speed_scaling_factor', 0.0), ('ur_speed_slider', 0.01), ('stop_trigger', STOP),
    ('stop_setbool', True)])
def test_before_any_message_every_output_commands_a_stop(output: str,
                                                         stop_request: object) -> None:
    adapter = DriverAdapter(AdapterConfig(output=output))
    step = adapter.tick(0.0)
    assert step.command.scale == 0.0 and step.command.reason is Reason.SILENT
    assert (step.publish if output == 'speed_scaling_factor' else step.call.request) \
        == stop_request


def test_fresh_input_is_followed_and_a_protective_stop_forces_zero() -> None:
    adapter = DriverAdapter(CFG)
    assert running(adapter, 0.0, 0.6).command == adapter.last
    assert adapter.last.scale == 0.6 and adapter.last.reason is Reason.OK
    step = adapter.on_protective_stop(0.01, True)
    assert step.command.scale == 0.0 and step.command.reason is Reason.STOP
    step = adapter.on_speed_scale(0.02, 0.9)   # a scale does not lift the stop
    assert step.command.scale == 0.0 and step.command.reason is Reason.STOP


def test_only_a_scale_without_protective_stop_is_not_enough() -> None:
    adapter = DriverAdapter(CFG)
    step = adapter.on_speed_scale(0.0, 1.0)
    assert step.command.scale == 0.0 and 'no protective_stop' in step.command.detail


@pytest.mark.parametrize('silent', ['speed_scale', 'protective_stop'])
def test_silence_commands_zero_and_holds_it_until_fresh_input(silent: str) -> None:
    adapter = DriverAdapter(CFG)
    running(adapter, 0.0, 0.8)
    t = 0.0
    while t < TIMEOUT:   # the other input keeps coming: still not enough
        t += 0.05
        if silent == 'speed_scale':
            adapter.on_protective_stop(t, False)
        else:
            adapter.on_speed_scale(t, 0.8)
    assert adapter.tick(TIMEOUT).command.scale == 0.8          # at the limit: still fresh
    step = adapter.tick(TIMEOUT + 0.001)
    assert step.command.scale == 0.0 and step.command.reason is Reason.SILENT
    assert f'{silent} silent' in step.command.detail
    for k in range(1, 200):   # held: never the last value again, however long it lasts
        assert adapter.tick(TIMEOUT + k * 0.05).command.scale == 0.0
    step = running(adapter, 20.0, 0.7)
    assert step.command.scale == 0.7 and step.command.reason is Reason.OK


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf, -0.01, 1.0001, 2.0, None,
                                 'fast', True])
def test_a_value_that_is_no_number_in_0_1_commands_zero_and_holds_it(bad: object) -> None:
    adapter = DriverAdapter(CFG)
    running(adapter, 0.0, 1.0)
    step = adapter.on_speed_scale(0.01, bad)
    assert step.command.scale == 0.0 and step.command.reason is Reason.INVALID
    for k in range(1, 20):   # protective_stop keeps saying go: the bad value still holds
        assert adapter.on_protective_stop(0.01 + 0.02 * k, False).command.scale == 0.0
    assert adapter.input.rejected == 1
    step = adapter.on_speed_scale(0.5, 0.4)   # fresh, valid input resumes
    assert step.command.scale == 0.4 and step.command.reason is Reason.OK


@pytest.mark.parametrize('edge', [0.0, 1.0, 0])
def test_the_range_ends_are_valid(edge: float) -> None:
    adapter = DriverAdapter(CFG)
    step = running(adapter, 0.0, edge)
    assert step.command.reason is Reason.OK and step.command.scale == edge


_EVENT = st.one_of(
    st.tuples(st.just('scale'), st.floats(min_value=0.0, max_value=0.6),
              st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                        st.floats(min_value=0.0, max_value=1.0))),
    st.tuples(st.just('stop'), st.floats(min_value=0.0, max_value=0.6), st.booleans()),
    st.tuples(st.just('tick'), st.floats(min_value=0.0, max_value=0.6), st.none()))


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_EVENT, max_size=60))
def test_the_command_is_zero_or_the_latest_fresh_valid_scale(events: list) -> None:
    """Never a kept value: non-zero only as the last valid scale, fresh, with no stop."""
    adapter = DriverAdapter(CFG)
    now, last_scale, scale_s, last_stop, stop_s, bad = 0.0, None, None, None, None, False
    for kind, dt, value in events:
        now += dt
        if kind == 'scale':
            step = adapter.on_speed_scale(now, value)
            if math.isfinite(value) and 0.0 <= value <= 1.0:
                last_scale, scale_s, bad = value, now, False
            else:
                bad = True
        elif kind == 'stop':
            step = adapter.on_protective_stop(now, value)
            last_stop, stop_s = value, now
        else:
            step = adapter.tick(now)
        fresh = scale_s is not None and now - scale_s <= TIMEOUT \
            and stop_s is not None and now - stop_s <= TIMEOUT
        if bad or not fresh or last_stop is not False:
            assert step.command.scale == 0.0, (events, step)
        else:
            assert step.command.scale == last_scale, (events, step)


# --- speed_scaling_factor: the heartbeat -------------------------------------------------------

def test_the_factor_is_published_on_every_change_and_at_the_period_only() -> None:
    adapter = DriverAdapter(CFG)
    period = CFG.publish_period_s
    assert running(adapter, 0.0, 0.5).publish == 0.5       # (0 at the first message, then 0.5)
    assert adapter.on_speed_scale(0.001, 0.5).publish is None   # unchanged, within the period
    assert adapter.on_speed_scale(0.002, 0.4).publish == 0.4    # changed: at once
    assert adapter.tick(0.002 + period / 2).publish is None
    assert adapter.tick(0.002 + period).publish == 0.4          # the heartbeat
    assert adapter.heartbeat.published >= 3
    assert tick_period_s(CFG) <= min(CFG.publish_period_s, CFG.input_timeout_s / 2)


# --- service outputs: one call in flight, retries, resends -------------------------------------

def slider() -> DriverAdapter:
    return started('ur_speed_slider')


def test_slider_gets_the_scale_raised_to_the_smallest_fraction_the_ur_driver_takes() -> None:
    adapter = slider()
    assert adapter.calls.confirmed == 0.01                 # stop: as low as the UR allows
    step = running(adapter, 0.02, 0.005)
    assert step.call is None    # 0.005 -> 0.01, already confirmed: nothing to send
    step = adapter.on_speed_scale(0.03, 0.75)
    assert step.call.request == 0.75


def test_slider_never_has_two_calls_in_flight_and_sends_the_newest_value_next() -> None:
    adapter = slider()
    first = running(adapter, 0.0, 0.3)
    assert first.call.request == 0.3
    for k, value in enumerate((0.4, 0.5, 0.6)):            # changes while the call is out
        assert adapter.on_speed_scale(0.01 * (k + 1), value).call is None
    assert adapter.calls.in_flight == first.call
    step = adapter.answered(0.05, first.call.id, True)
    assert step.call.request == 0.6                        # the newest, at once
    assert adapter.calls.made == 3                         # (the first: the stop at start)


def test_slider_resends_an_unchanged_fraction_after_the_resend_period() -> None:
    adapter = slider()
    resend = CFG.slider_resend_period_s
    confirm(adapter, 0.0, running(adapter, 0.0, 0.9))
    t, calls = 0.0, []
    while t < 2.5 * resend:
        t += 0.05
        step = running(adapter, t, 0.9)
        if step.call is not None:
            calls.append(t)
            adapter.answered(t, step.call.id, True)
    assert len(calls) == 2 and calls[0] >= resend and calls[1] - calls[0] >= resend


def test_a_refused_call_is_counted_and_retried_after_the_retry_period() -> None:
    adapter = slider()
    retry = CFG.retry_period_s
    first = running(adapter, 0.0, 0.5)
    step = adapter.answered(0.01, first.call.id, False, 'not in remote control')
    assert step.call is None and adapter.calls.failed == 1
    assert 'not in remote control' in adapter.calls.last_error
    assert adapter.level() == 'ERROR'
    assert running(adapter, 0.01 + retry / 2, 0.5).call is None      # not before the period
    again = running(adapter, 0.01 + retry, 0.5)
    assert again.call.request == 0.5
    confirm(adapter, 0.02 + retry, again)
    assert adapter.calls.confirmed == 0.5 and adapter.level() == 'OK'


def test_a_changed_request_after_a_failure_goes_out_at_once() -> None:
    adapter = DriverAdapter(AdapterConfig(output='stop_setbool'))
    first = adapter.tick(0.0)
    assert first.call.request is True
    adapter.answered(0.01, first.call.id, False)
    step = running(adapter, 0.02, 1.0)          # now running: false, without waiting
    assert step.call.request is False


def test_an_unanswered_call_is_abandoned_after_the_call_timeout() -> None:
    adapter = slider()
    timeout, retry = CFG.call_timeout_s, CFG.retry_period_s
    first = running(adapter, 0.0, 0.5)
    steps = {}
    for k in range(1, int((timeout + 2 * retry) / 0.01)):   # input keeps coming, no answer
        steps[k] = running(adapter, 0.01 * k, 0.5)
    abandoned = [k for k, step in steps.items() if step.abandon is not None]
    calls = [k for k, step in steps.items() if step.call is not None]
    assert steps[abandoned[0]].abandon == first.call
    step_s = 0.0101   # one step of this loop, with float rounding
    assert abs(abandoned[0] * 0.01 - timeout) <= step_s
    assert 'no answer' in adapter.calls.last_error and adapter.calls.failed == 1
    assert calls and 0.0 <= calls[0] * 0.01 - (timeout + retry) + 1e-9 <= step_s  # not before
    retry_call = steps[calls[0]].call
    assert retry_call.request == 0.5 and retry_call.id != first.call.id
    assert adapter.calls.confirmed is None   # unknown since the timeout (0.5 may have run)
    adapter.calls.answered(2.0, first.call.id, True)   # the late answer of the abandoned call
    assert adapter.calls.confirmed is None and adapter.calls.in_flight == retry_call


def test_a_missing_service_is_counted_and_retried() -> None:
    adapter = DriverAdapter(AdapterConfig(output='stop_trigger'))
    step = adapter.tick(0.0)
    adapter.unavailable(0.0, step.call.id, 'service stop not available')
    assert adapter.calls.failed == 1 and adapter.calls.in_flight is None
    assert adapter.tick(0.01).call is None
    assert adapter.tick(CFG.retry_period_s).call.request == STOP
    values = adapter.diagnostic_values(CFG.retry_period_s)
    assert values['calls_failed'] == '1' and values['last_error'] == 'service stop not available'


def test_stop_trigger_calls_stop_once_per_stop_and_resume_only_when_configured() -> None:
    for has_resume in (False, True):
        adapter = DriverAdapter(AdapterConfig(output='stop_trigger'), has_resume=has_resume)
        sent = []

        def feed(t: float, scale: float, stop: bool, adapter: DriverAdapter = adapter,
                 sent: list = sent) -> None:
            for step in (adapter.on_protective_stop(t, stop), adapter.on_speed_scale(t, scale)):
                if step.call is not None:
                    sent.append(step.call.request)
                    adapter.answered(t, step.call.id, True)

        t = 0.0
        for scale, stop, ticks in ((0.0, True, 10), (1.0, False, 10), (0.3, False, 5),
                                   (0.0, True, 10), (1.0, False, 5)):
            for _ in range(ticks):
                t += 0.05
                feed(t, scale, stop)
        expected = [STOP, RESUME, STOP, RESUME] if has_resume else [STOP, STOP]
        assert sent == expected, has_resume


def test_stop_outputs_stop_at_or_below_stop_at_scale() -> None:
    adapter = started('stop_setbool', stop_at_scale=0.2)
    step = running(adapter, 0.01, 0.5)
    assert step.call.request is False
    confirm(adapter, 0.02, step)
    assert running(adapter, 0.03, 0.2).call.request is True


# --- a stop never waits: unknown after a failure, pre-emption, the exit stop ------------------

#: (output, the stop request, a request that lets the robot move)
STOP_OUTPUTS = [('stop_trigger', STOP, RESUME), ('stop_setbool', True, False),
                ('ur_speed_slider', 0.01, 1.0)]


def resuming(output: str) -> tuple[DriverAdapter, Step]:
    """An adapter whose driver confirmed the stop, now with the move request in flight."""
    # (stop_trigger: with a resume service; the slider: no resend to hide a fault)
    adapter = DriverAdapter(AdapterConfig(output=output, slider_resend_period_s=3600.0),
                            has_resume=True)
    confirm(adapter, 0.0, adapter.tick(0.0))
    step = running(adapter, 0.01, 1.0)
    assert step.call is not None and adapter.calls.in_flight == step.call
    return adapter, step


def stopping(adapter: DriverAdapter, now: float) -> Step:
    """The monitor says stop (the stop first, as it publishes); return the step that acted."""
    first = adapter.on_protective_stop(now, True)
    second = adapter.on_speed_scale(now, 0.0)
    return first if first.call is not None or first.abandon is not None else second


@pytest.mark.parametrize(('output', 'stop', 'move'), STOP_OUTPUTS)
@pytest.mark.parametrize('failure', ['timeout', 'refused', 'unavailable'])
def test_a_failed_move_call_leaves_the_state_unknown_and_the_next_stop_is_called(
        output: str, stop: object, move: object, failure: str) -> None:
    adapter, step = resuming(output)
    move_call = step.call
    assert move_call.request == move
    if failure == 'timeout':   # the driver may have run it and answer late, or never
        t, abandon = 0.01, None
        while abandon is None:
            t += 0.01
            abandon = running(adapter, t, 1.0).abandon
        assert abandon == move_call
    elif failure == 'refused':
        t = 0.02
        adapter.answered(t, move_call.id, False, 'busy')
    else:
        t = 0.02
        adapter.unavailable(t, move_call.id, 'service gone')
    assert adapter.calls.confirmed is None and adapter.calls.failed == 1
    step = stopping(adapter, t + 0.01)   # within retry_period_s of the failure: still at once
    assert step.call is not None and step.call.request == stop, step
    confirm(adapter, t + 0.02, step)
    assert adapter.calls.confirmed == stop


@pytest.mark.parametrize(('output', 'stop', 'move'), STOP_OUTPUTS)
def test_a_stop_while_a_move_call_is_in_flight_is_sent_at_once(output: str, stop: object,
                                                                move: object) -> None:
    adapter, step = resuming(output)
    move_call = step.call
    step = stopping(adapter, 0.02)
    assert step.abandon == move_call
    assert step.call is not None and step.call.request == stop
    assert adapter.calls.in_flight == step.call and adapter.calls.preempted == 1
    assert adapter.calls.confirmed is None   # the move may have run: nothing is confirmed
    assert adapter.diagnostic_values(0.02)['calls_preempted'] == '1'
    # The other way round waits: a move never pre-empts a stop in flight.
    assert running(adapter, 0.03, 1.0).call is None
    assert adapter.calls.in_flight == step.call and adapter.calls.made == 3


def test_a_lower_slider_fraction_pre_empts_a_higher_one_and_a_raise_waits() -> None:
    adapter = slider()
    first = running(adapter, 0.0, 0.8).call
    lower = adapter.on_speed_scale(0.01, 0.5)
    assert lower.abandon == first and lower.call.request == 0.5
    assert adapter.on_speed_scale(0.02, 0.7).call is None   # a raise waits for the answer
    assert adapter.calls.in_flight == lower.call
    step = adapter.answered(0.03, lower.call.id, True)
    assert step.call.request == 0.7                        # the newest wanted, next


@pytest.mark.parametrize(('output', 'stop', 'move'), STOP_OUTPUTS)
def test_a_late_answer_to_an_abandoned_call_confirms_nothing(output: str, stop: object,
                                                             move: object) -> None:
    adapter, step = resuming(output)
    move_call = step.call
    stop_call = stopping(adapter, 0.02).call
    assert stop_call.request == stop
    adapter.answered(0.03, move_call.id, True)            # late, while the stop is in flight
    assert adapter.calls.confirmed is None and adapter.calls.in_flight == stop_call
    assert adapter.calls.late == 1 and adapter.calls.succeeded == 1   # (the start's stop)
    assert stopping(adapter, 0.04).call is None           # the stop is still in flight
    confirm(adapter, 0.05, Step(adapter.last, call=stop_call))
    assert adapter.calls.confirmed == stop
    assert stopping(adapter, 0.06).call is None           # confirmed: nothing to send


@pytest.mark.parametrize(('output', 'stop', 'move'), STOP_OUTPUTS)
def test_a_late_success_after_a_newer_confirmation_makes_the_driver_state_unknown(
        output: str, stop: object, move: object) -> None:
    """The driver may have run the old request last: the wanted stop is sent again."""
    adapter, step = resuming(output)
    move_call = step.call
    stop_call = stopping(adapter, 0.02).call
    confirm(adapter, 0.03, Step(adapter.last, call=stop_call))
    assert adapter.calls.confirmed == stop
    again = adapter.answered(0.04, move_call.id, True)     # the move, answered after the stop
    assert again.call is not None and again.call.request == stop   # sent again, at once
    assert adapter.calls.confirmed is None and adapter.calls.late == 1
    adapter.answered(0.05, move_call.id, True)             # (an answer counts once)
    assert adapter.calls.late == 1 and adapter.calls.in_flight == again.call


def test_a_late_refusal_changes_nothing_and_only_the_newest_abandoned_are_kept() -> None:
    adapter = slider()
    calls = [running(adapter, 0.0, 1.0).call]
    for k in range(1, KEEP_ABANDONED + 3):   # each lower fraction pre-empts the one before
        calls.append(adapter.on_speed_scale(0.001 * k, 1.0 - 0.05 * k).call)
    assert all(call is not None for call in calls) and adapter.calls.preempted == len(calls) - 1
    confirm(adapter, 0.1, Step(adapter.last, call=calls[-1]))
    confirmed = adapter.calls.confirmed
    adapter.answered(0.11, calls[-2].id, False, 'too late')   # a refusal: it did not run
    adapter.answered(0.12, calls[0].id, True)                 # too old: no longer listened for
    assert adapter.calls.confirmed == confirmed and adapter.calls.late == 0
    adapter.answered(0.13, calls[-3].id, True)                # kept: the state is unknown
    assert adapter.calls.confirmed is None and adapter.calls.late == 1


@pytest.mark.parametrize(('output', 'stop', 'move'), STOP_OUTPUTS)
@pytest.mark.parametrize('before', ['move_in_flight', 'stop_in_flight', 'stop_confirmed'])
def test_the_exit_stop_is_sent_whatever_is_in_flight_or_confirmed(
        output: str, stop: object, move: object, before: str) -> None:
    adapter, step = resuming(output)
    in_flight = step.call
    if before != 'move_in_flight':
        in_flight = stopping(adapter, 0.02).call
    if before == 'stop_confirmed':
        confirm(adapter, 0.03, Step(adapter.last, call=in_flight))
        in_flight = None
    step = adapter.stop_now(0.04, 'driver adapter exiting')
    assert step.call is not None and step.call.request == stop
    assert step.abandon == in_flight and adapter.calls.in_flight == step.call
    assert step.command.scale == 0.0 and 'exiting' in step.command.detail
    assert running(adapter, 0.05, 1.0).command.scale == 0.0   # held


def test_the_exit_stop_publishes_a_zero_factor_even_if_unchanged() -> None:
    adapter = DriverAdapter(CFG)
    assert adapter.tick(0.0).publish == 0.0
    assert adapter.tick(0.001).publish is None
    assert adapter.stop_now(0.002, 'driver adapter exiting').publish == 0.0


#: Request order by how much the robot may move (lower: less).
_RANK = {STOP: 0, RESUME: 1, True: 0, False: 1}

_CALL_EVENT = st.one_of(
    st.tuples(st.just('input'), st.floats(min_value=0.0, max_value=0.3),
              st.sampled_from([0.0, 0.3, 0.6, 1.0]), st.booleans()),
    st.tuples(st.just('tick'), st.floats(min_value=0.0, max_value=0.6), st.none(), st.none()),
    st.tuples(st.just('answer'), st.floats(min_value=0.0, max_value=0.1), st.booleans(),
              st.none()),
    st.tuples(st.just('unavailable'), st.floats(min_value=0.0, max_value=0.1), st.none(),
              st.none()),
    st.tuples(st.just('late'), st.floats(min_value=0.0, max_value=0.1), st.booleans(),
              st.integers(min_value=0, max_value=20)))


@settings(max_examples=300, deadline=None)
@given(output=st.sampled_from(['stop_trigger', 'stop_setbool', 'ur_speed_slider']),
       events=st.lists(_CALL_EVENT, max_size=60))
def test_the_driver_is_never_last_told_more_than_wanted_nor_believed_to_hold_another(
        output: str, events: list) -> None:
    """The driver is never last told more than wanted, nor believed to hold an older request.

    Whatever answers come (late, refused, none), after every step the last request sent lets
    the robot move no more than the wanted one; with no call in flight the confirmed request,
    if any, is the last one sent (what a driver that runs requests in order holds).
    """
    adapter = DriverAdapter(AdapterConfig(output=output), has_resume=True)

    def rank(request: object) -> float:
        return request if isinstance(request, float) else _RANK[request]

    now, sent, abandoned = 0.0, [], []

    def took(step: Step | None) -> None:
        if step is not None:
            if step.abandon is not None:
                abandoned.append(step.abandon)
            if step.call is not None:
                sent.append(step.call.request)
        assert sent, events
        assert rank(sent[-1]) <= rank(adapter.wanted(adapter.last)), (events, sent)
        in_flight = adapter.calls.in_flight
        if in_flight is not None:
            assert in_flight.request == sent[-1], (events, sent)
        else:
            assert adapter.calls.confirmed in (None, sent[-1]), (events, sent)

    took(adapter.tick(now))
    for kind, dt, a, b in events:
        now += dt
        in_flight = adapter.calls.in_flight
        if kind == 'input':
            took(adapter.on_protective_stop(now, b))
            took(adapter.on_speed_scale(now, a))
        elif kind == 'tick':
            took(adapter.tick(now))
        elif kind == 'answer' and in_flight is not None:
            took(adapter.answered(now, in_flight.id, a))
        elif kind == 'unavailable' and in_flight is not None:
            adapter.unavailable(now, in_flight.id, 'service gone')
            took(None)
        elif kind == 'late' and abandoned:
            took(adapter.answered(now, abandoned[b % len(abandoned)].id, a))


# --- diagnostics and settings ------------------------------------------------------------------

def test_diagnostics_say_output_commanded_value_reason_and_failures() -> None:
    adapter = slider()
    adapter.tick(0.0)
    values = adapter.diagnostic_values(0.0)
    assert values['output'] == 'ur_speed_slider' and values['commanded'] == '0.010'
    assert values['reason'] == 'silent' and values['calls_failed'] == '0'
    assert values['speed_scale_age_s'] == 'never' and adapter.level() == 'ERROR'
    assert adapter.diagnostics_due(0.0) and not adapter.diagnostics_due(0.1)
    topic = DriverAdapter(CFG)
    running(topic, 0.0, 1.0)
    values = topic.diagnostic_values(0.1)
    assert values['reason'] == 'ok' and values['commanded'] == '1.000'
    assert 'published' in values and topic.level() == 'OK'
    topic.on_protective_stop(0.2, True)
    assert topic.level() == 'WARN' and topic.diagnostics_due(0.2)   # the reason changed


@pytest.mark.parametrize(('field', 'value', 'message'), [
    ('output', 'digital_out', 'use one of'),
    ('input_timeout_s', 0.0, 'input_timeout_s'),
    ('min_slider_fraction', 1.5, 'min_slider_fraction'),
    ('retry_period_s', math.nan, 'finite'),
])
def test_bad_settings_are_refused_with_the_reason(field: str, value: object,
                                                  message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(CFG, **{field: value})


def test_service_calls_alone_confirm_no_call_requests_without_calling() -> None:
    calls = ServiceCalls(CFG, no_call=frozenset({RESUME}))
    assert calls.poll(0.0, RESUME) is None and calls.confirmed == RESUME and calls.made == 0
