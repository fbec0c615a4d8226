"""What a robot driver is told, from the safety monitor's ``speed_scale`` and ``protective_stop``.

Pure data, no ROS: ``driver_adapter_node`` feeds :class:`DriverAdapter` the messages and timer
ticks, each with the time it happened, and does what each :class:`Step` says (publish a factor,
start a service call, abandon one).

The fail-safe rule is the same for every output (:class:`SafetyInput`): the robot may move at
``speed_scale`` only while that value is fresh (received within ``input_timeout_s``), a number
in [0, 1], and ``protective_stop`` is fresh and false. Anything else -- nothing received yet,
silence, a non-finite or out-of-range value -- commands 0 and holds it until fresh, valid input
arrives; the last good value is never kept.

The outputs (:data:`OUTPUTS`):

* ``speed_scaling_factor``: publish the scale (ros2_control JTC), on every change and at least
  every ``publish_period_s`` (:class:`Heartbeat`);
* ``ur_speed_slider``: call the UR driver's speed slider with the scale, raised to
  ``min_slider_fraction`` (the UR driver refuses fractions below 0.01, so the slider alone
  can never stop a UR), on a change and every ``slider_resend_period_s``;
* ``stop_trigger``: call a stop ``Trigger`` when the robot must stop, a resume ``Trigger`` (if
  configured) when it may move again;
* ``stop_setbool``: call a ``SetBool`` with true to stop, false to resume.

A service output has one call in flight (:class:`ServiceCalls`), but a request that asks for
less motion than the call in flight (a stop over a resume, a lower slider fraction) does not
wait for it: the call in flight is abandoned and the safer request sent at once, so the driver
may then hold two unanswered requests. A call that fails, is refused, finds no service or gets
no answer within ``call_timeout_s`` is counted and leaves the driver's state unknown: whatever
is wanted next is sent (a changed request at once, the same one again after
``retry_period_s``). The answer to an abandoned call confirms nothing; a late success for some
other request than the one confirmed since makes the state unknown again (the driver may have
executed it last), so the wanted request is sent again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cobot_hybrid_perception.errors import ConfigError
from cobot_hybrid_protocol.settings import check_settings, setting

__all__ = ['DIAG_PERIOD_S', 'KEEP_ABANDONED', 'OUTPUTS', 'RESUME', 'STOP', 'AdapterConfig',
           'Call', 'Command', 'DriverAdapter', 'Heartbeat', 'Reason', 'Request', 'SafetyInput',
           'ServiceCalls', 'Step', 'tick_period_s']

#: The driver interfaces the adapter can drive (one per node).
OUTPUTS = ('speed_scaling_factor', 'ur_speed_slider', 'stop_trigger', 'stop_setbool')
#: Diagnostics are published at least this often [s], and on every change of reason.
DIAG_PERIOD_S = 0.5
#: The two requests of ``stop_trigger`` (which Trigger service to call).
STOP = 'stop'
RESUME = 'resume'
#: The late answers of this many abandoned calls are still listened for (older ones are not).
KEEP_ABANDONED = 8

Request = float | bool | str   # slider fraction | SetBool data | STOP / RESUME


@dataclass(frozen=True)
class AdapterConfig:
    """How the adapter decides (the node's wiring, topic and service names, is its own)."""

    output: str = setting('speed_scaling_factor', 'which driver interface to drive',
                          choices=OUTPUTS)
    input_timeout_s: float = setting(0.25, 'speed_scale or protective_stop older than this '
                                     '(or never received) commands a stop', unit='s',
                                     low=0.01, high=5.0)
    publish_period_s: float = setting(0.05, 'speed_scaling_factor: publish at least this '
                                      'often (and on every change)', unit='s', low=0.005,
                                      high=1.0)
    slider_resend_period_s: float = setting(1.0, 'ur_speed_slider: call again with an '
                                            'unchanged fraction after this long (someone may '
                                            'have moved the pendant slider)', unit='s',
                                            low=0.05, high=3600.0)
    min_slider_fraction: float = setting(0.01, 'ur_speed_slider: smallest fraction sent; the '
                                         'UR driver refuses less than 0.01', low=0.0,
                                         high=1.0)
    stop_at_scale: float = setting(0.0, 'stop_trigger/stop_setbool: stop while the commanded '
                                   'scale is at or below this (0: on a stop only)', low=0.0,
                                   high=1.0)
    call_timeout_s: float = setting(1.0, 'a service call not answered within this counts as '
                                    'failed (and the next may start)', unit='s', low=0.01,
                                    high=60.0)
    retry_period_s: float = setting(0.2, 'a failed call, or a missing service, is tried '
                                    'again after this', unit='s', low=0.01, high=60.0)

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)


def tick_period_s(cfg: AdapterConfig) -> float:
    """Return the node's timer period: fine enough for the heartbeat and the silence check."""
    return min(cfg.publish_period_s, cfg.input_timeout_s / 5.0)


class Reason(Enum):
    """Why the adapter commands what it does."""

    OK = 'ok'              # fresh, valid input: the monitor's scale
    STOP = 'stop'          # protective_stop is true
    SILENT = 'silent'      # an input never came, or stopped coming
    INVALID = 'invalid'    # speed_scale was not a number in [0, 1]


@dataclass(frozen=True)
class Command:
    """What the robot may do: ``scale`` 0 (stop) .. 1 (full speed), and why."""

    scale: float
    reason: Reason
    detail: str


def _valid_scale(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and 0.0 <= value <= 1.0


class SafetyInput:
    """The monitor's two outputs as last received, judged with the fail-safe rule."""

    def __init__(self, cfg: AdapterConfig) -> None:
        self.cfg = cfg
        self._scale = 0.0
        self._scale_s: float | None = None
        self._stop = True
        self._stop_s: float | None = None
        self._invalid = ''
        self._held = ''
        self.rejected = 0

    def on_speed_scale(self, now_s: float, value: object) -> None:
        """Take a ``speed_scale``; a value that is no number in [0, 1] holds a stop."""
        if not _valid_scale(value):
            self._invalid = f'speed_scale {value!r} is not a number in [0, 1]'
            self.rejected += 1
            return
        assert isinstance(value, (int, float))
        self._scale, self._scale_s, self._invalid = float(value), now_s, ''

    def on_protective_stop(self, now_s: float, stop: bool) -> None:
        """Take a ``protective_stop``."""
        self._stop, self._stop_s = bool(stop), now_s

    def hold(self, detail: str) -> None:
        """Command a stop whatever comes in, until :meth:`release` (the node going inactive)."""
        self._held = detail

    def release(self) -> None:
        """End a :meth:`hold`; the inputs decide again."""
        self._held = ''

    def ages(self, now_s: float) -> tuple[float | None, float | None]:
        """Return how long ago each input came (None: never)."""
        return (None if self._scale_s is None else now_s - self._scale_s,
                None if self._stop_s is None else now_s - self._stop_s)

    def command(self, now_s: float) -> Command:
        """Return what the robot may do now."""
        if self._held:
            return Command(0.0, Reason.STOP, self._held)
        if self._invalid:
            return Command(0.0, Reason.INVALID, f'{self._invalid}; holding 0 until a valid one')
        limit = self.cfg.input_timeout_s
        for name, age in zip(('speed_scale', 'protective_stop'), self.ages(now_s),
                             strict=True):
            if age is None:
                return Command(0.0, Reason.SILENT, f'no {name} received yet')
            if age > limit:
                return Command(0.0, Reason.SILENT,
                               f'{name} silent for {age:.3f} s (limit {limit:g} s)')
        if self._stop:
            return Command(0.0, Reason.STOP, 'protective_stop is true')
        return Command(self._scale, Reason.OK, f'speed_scale {self._scale:.3f}')


class Heartbeat:
    """When the topic output publishes: on every change, and at least every ``period_s``."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: float | None = None
        self._last_s = 0.0
        self.published = 0

    def take(self, now_s: float, value: float, force: bool = False) -> bool:
        """Return whether to publish ``value`` now (and count it as published if so)."""
        if not force and self._last is not None and value == self._last \
                and now_s - self._last_s < self.period_s:
            return False
        self._last, self._last_s = value, now_s
        self.published += 1
        return True


_NOTHING = object()


@dataclass(frozen=True)
class Call:
    """A service call to start: its id (to match the answer) and the request."""

    id: int
    request: Request


class ServiceCalls:
    """One driver service: which request to send, one call in flight but for a safer request.

    A request is sent when it differs from the last one the driver confirmed (or nothing is
    confirmed), or when ``resend_period_s`` (None: never) has passed since that confirmation.
    While a call is in flight nothing else is sent, unless ``safer(wanted, in_flight)``: then
    the call in flight is abandoned and ``wanted`` sent at once (:meth:`preempt`). A call that
    fails, times out or is abandoned leaves the driver's state unknown (nothing confirmed), so
    the next wanted request is always sent; the failed request again only after
    ``retry_period_s``, unless another call was sent since. Requests in ``no_call`` are
    confirmed without calling (a resume with no resume service configured).
    """

    def __init__(self, cfg: AdapterConfig, resend_period_s: float | None = None,
                 no_call: frozenset[Request] = frozenset(),
                 safer: Callable[[Request, Request], bool] | None = None) -> None:
        self.cfg = cfg
        self.resend_period_s = resend_period_s
        self.no_call = no_call
        self.safer = safer
        self._next_id = 0
        self._in_flight: Call | None = None
        self._sent_s = 0.0
        self._confirmed: object = _NOTHING
        self._confirmed_s = 0.0
        self._failed: object = _NOTHING
        self._failed_s = 0.0
        self._retry: object = _NOTHING   # the failed request, until another call is sent
        self._abandoned: dict[int, Request] = {}
        self.made = 0
        self.succeeded = 0
        self.failed = 0
        self.preempted = 0
        self.late = 0
        self.last_error = ''

    @property
    def in_flight(self) -> Call | None:
        """The call sent and not answered yet (an abandoned one no longer counts)."""
        return self._in_flight

    @property
    def confirmed(self) -> Request | None:
        """The last request the driver confirmed (None: none yet, or the state is unknown)."""
        return None if self._confirmed is _NOTHING else self._confirmed  # type: ignore[return-value]

    @property
    def failing(self) -> bool:
        """Whether the latest call failed (until one succeeds)."""
        return self._failed is not _NOTHING

    def expire(self, now_s: float) -> Call | None:
        """Give up on a call unanswered for ``call_timeout_s``: return it (to abandon it)."""
        call = self._in_flight
        if call is None or now_s - self._sent_s < self.cfg.call_timeout_s:
            return None
        self._abandon(call)
        self._fail(now_s, call.request, f'no answer within {self.cfg.call_timeout_s:g} s')
        return call

    def preempt(self, wanted: Request) -> Call | None:
        """Abandon the call in flight if ``wanted`` is safer: return it (then :meth:`poll`)."""
        call = self._in_flight
        if call is None or self.safer is None or wanted == call.request \
                or not self.safer(wanted, call.request):
            return None
        self._abandon(call)
        self.preempted += 1
        return call

    def force(self, now_s: float, wanted: Request) -> tuple[Call | None, Call | None]:
        """Send ``wanted`` now whatever is in flight or confirmed: return (abandoned, call)."""
        call = self._in_flight
        if call is not None:
            self._abandon(call)
        if wanted in self.no_call:
            self._confirmed, self._confirmed_s = wanted, now_s
            return call, None
        return call, self._start(now_s, wanted)

    def poll(self, now_s: float, wanted: Request) -> Call | None:
        """Return the call to start now for ``wanted`` (it is then in flight), or None."""
        if self._in_flight is not None:
            return None
        if wanted in self.no_call:
            self._confirmed, self._confirmed_s = wanted, now_s
            return None
        if self._retry is not _NOTHING and wanted == self._retry \
                and now_s - self._failed_s < self.cfg.retry_period_s:
            return None
        if self._confirmed is not _NOTHING and wanted == self._confirmed \
                and (self.resend_period_s is None
                     or now_s - self._confirmed_s < self.resend_period_s):
            return None
        return self._start(now_s, wanted)

    def answered(self, now_s: float, call_id: int, success: bool, message: str = '') -> None:
        """Take the driver's answer to a call.

        The answer to an abandoned call confirms nothing; a success for another request than
        the one confirmed since makes the driver's state unknown (it may have run last).
        """
        call = self._in_flight
        if call is None or call.id != call_id:
            late = self._abandoned.pop(call_id, _NOTHING)
            if late is not _NOTHING and success:
                self.late += 1
                if late != self._confirmed:
                    self._confirmed = _NOTHING
            return
        if success:
            self._in_flight = None
            self._confirmed, self._confirmed_s = call.request, now_s
            self._failed = _NOTHING
            self.succeeded += 1
        else:
            self._fail(now_s, call.request, f'driver refused: {message}' if message
                       else 'driver refused (success false)')

    def unavailable(self, now_s: float, call_id: int, reason: str) -> None:
        """Count a call that could not be sent (no service, an error) as failed."""
        call = self._in_flight
        if call is not None and call.id == call_id:
            self._fail(now_s, call.request, reason)

    def _start(self, now_s: float, wanted: Request) -> Call:
        self._retry = _NOTHING   # (a stop after a pre-empted call waits for no retry period)
        self._next_id += 1
        self._in_flight = Call(self._next_id, wanted)
        self._sent_s = now_s
        self.made += 1
        return self._in_flight

    def _abandon(self, call: Call) -> None:
        # The driver may still run it and answer: its answer is listened for, and until then
        # nothing is confirmed.
        self._in_flight = None
        self._confirmed = _NOTHING
        self._abandoned[call.id] = call.request
        while len(self._abandoned) > KEEP_ABANDONED:
            del self._abandoned[next(iter(self._abandoned))]

    def _fail(self, now_s: float, request: Request, error: str) -> None:
        self._in_flight = None
        self._confirmed = _NOTHING   # the driver may have run it, or not: unknown
        self._failed, self._failed_s = request, now_s
        self._retry = request
        self.failed += 1
        self.last_error = error


@dataclass(frozen=True)
class Step:
    """What the node does now: ``publish`` a factor, start ``call``, ``abandon`` a call.

    An abandoned call is no longer waited for, but its answer is still passed to
    :meth:`DriverAdapter.answered` (for the newest :data:`KEEP_ABANDONED`): it confirms nothing,
    and a late success may make the driver's state unknown.
    """

    command: Command
    publish: float | None = None
    call: Call | None = None
    abandon: Call | None = None


def _show(request: Request | None) -> str:
    if request is None:
        return 'none'
    if isinstance(request, bool):
        return 'true' if request else 'false'
    if isinstance(request, float):
        return f'{request:.3f}'
    return request


class DriverAdapter:
    """The adapter of one output: fed (now, value) events, it says what to command."""

    def __init__(self, cfg: AdapterConfig, has_resume: bool = False) -> None:
        self.cfg = cfg
        self.input = SafetyInput(cfg)
        self.has_resume = has_resume
        self.heartbeat = Heartbeat(cfg.publish_period_s)
        self.calls: ServiceCalls | None = None
        if cfg.output == 'ur_speed_slider':
            self.calls = ServiceCalls(cfg, resend_period_s=cfg.slider_resend_period_s,
                                      safer=self.safer)
        elif cfg.output == 'stop_trigger':
            self.calls = ServiceCalls(cfg, no_call=frozenset() if has_resume
                                      else frozenset({RESUME}), safer=self.safer)
        elif cfg.output == 'stop_setbool':
            self.calls = ServiceCalls(cfg, safer=self.safer)
        self._last_reason: Reason | None = None
        self._last_diag_s = 0.0
        self.last = Command(0.0, Reason.SILENT, 'not started')

    def on_speed_scale(self, now_s: float, value: object) -> Step:
        """Take a ``speed_scale`` message and decide."""
        self.input.on_speed_scale(now_s, value)
        return self.tick(now_s)

    def on_protective_stop(self, now_s: float, stop: bool) -> Step:
        """Take a ``protective_stop`` message and decide."""
        self.input.on_protective_stop(now_s, stop)
        return self.tick(now_s)

    def wanted(self, command: Command) -> Request:
        """Return what this output asks of the driver for a command."""
        output = self.cfg.output
        if output == 'speed_scaling_factor':
            return command.scale
        if output == 'ur_speed_slider':
            return max(command.scale, self.cfg.min_slider_fraction)
        stop = command.scale <= self.cfg.stop_at_scale
        if output == 'stop_trigger':
            return STOP if stop else RESUME
        return stop

    def safer(self, new: Request, old: Request) -> bool:
        """Return whether request ``new`` lets the robot move less than ``old``."""
        if self.cfg.output == 'ur_speed_slider':
            assert isinstance(new, float) and isinstance(old, float)
            return new < old
        stop = STOP if self.cfg.output == 'stop_trigger' else True
        return new == stop and old != stop

    def tick(self, now_s: float) -> Step:
        """Decide now (the node's timer calls this between messages)."""
        command = self.last = self.input.command(now_s)
        wanted = self.wanted(command)
        if self.calls is None:
            assert isinstance(wanted, float)
            return Step(command, publish=wanted if self.heartbeat.take(now_s, wanted) else None)
        abandon = self.calls.expire(now_s) or self.calls.preempt(wanted)
        return Step(command, call=self.calls.poll(now_s, wanted), abandon=abandon)

    def stop_now(self, now_s: float, detail: str) -> Step:
        """Hold a stop and send it now, whatever is in flight or confirmed (the node exiting)."""
        self.input.hold(detail)
        command = self.last = self.input.command(now_s)
        wanted = self.wanted(command)
        if self.calls is None:
            assert isinstance(wanted, float)
            self.heartbeat.take(now_s, wanted, force=True)
            return Step(command, publish=wanted)
        abandon, call = self.calls.force(now_s, wanted)
        return Step(command, call=call, abandon=abandon)

    def answered(self, now_s: float, call_id: int, success: bool, message: str = '') -> Step:
        """Take the driver's answer and decide (a failure may start a retry)."""
        assert self.calls is not None
        self.calls.answered(now_s, call_id, success, message)
        return self.tick(now_s)

    def unavailable(self, now_s: float, call_id: int, reason: str) -> None:
        """Count a call of :attr:`Step.call` that could not be sent as failed."""
        assert self.calls is not None
        self.calls.unavailable(now_s, call_id, reason)

    def diagnostics_due(self, now_s: float) -> bool:
        """Return whether to publish diagnostics now (reason changed, or DIAG_PERIOD_S)."""
        reason = self.last.reason
        if reason == self._last_reason and now_s - self._last_diag_s < DIAG_PERIOD_S:
            return False
        self._last_reason, self._last_diag_s = reason, now_s
        return True

    def level(self) -> str:
        """Return the diagnostic level: ERROR while silent/invalid or a call failing."""
        if self.last.reason in (Reason.SILENT, Reason.INVALID):
            return 'ERROR'
        if self.calls is not None and self.calls.failing:
            return 'ERROR'
        return 'WARN' if self.last.reason is Reason.STOP else 'OK'

    def diagnostic_values(self, now_s: float) -> dict[str, str]:
        """Return what the adapter reports: output, commanded value, reason, calls."""
        scale_age, stop_age = self.input.ages(now_s)
        values = {
            'output': self.cfg.output,
            'commanded': _show(self.wanted(self.last)),
            'speed_scale_commanded': f'{self.last.scale:.3f}',
            'reason': self.last.reason.value,
            'detail': self.last.detail,
            'speed_scale_age_s': 'never' if scale_age is None else f'{scale_age:.3f}',
            'protective_stop_age_s': 'never' if stop_age is None else f'{stop_age:.3f}',
            'inputs_rejected': str(self.input.rejected),
        }
        calls = self.calls
        if calls is None:
            values['published'] = str(self.heartbeat.published)
        else:
            values.update({
                'confirmed': _show(calls.confirmed),
                'calls_made': str(calls.made),
                'calls_succeeded': str(calls.succeeded),
                'calls_failed': str(calls.failed),
                'calls_preempted': str(calls.preempted),
                'late_answers': str(calls.late),
                'call_in_flight': 'no' if calls.in_flight is None
                else _show(calls.in_flight.request),
                'last_error': calls.last_error or 'none',
            })
        return values
