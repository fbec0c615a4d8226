"""The rollout controller alone (no MQTT): faults a second review found, each fixed.

A new rollout stranding robots mid-rollback, a detector's late 'expired' failing a rollout,
transient refusals re-sent without bound, a last step that judged only latency.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cobot_hybrid_planner.rollout import RolloutController, RolloutSpec
from cobot_hybrid_planner.rollout_gates import GateConfig
from cobot_hybrid_protocol.model_update import Acceptance, ModelMetrics, ModelRef, ModelStatus

T0 = 1_800_000_000.0


class Ctl:
    def __init__(self, tmp: Path, robots=4):
        self.sent = []   # (topic, robot, command json)
        def sign(robot, cmd):
            self.last = cmd
            return b'x'
        def send(topic, payload, exp):
            self.sent.append((topic, self.last))
        self.ctl = RolloutController(tmp / 'r', sign, send)
        self.tmp = tmp
        self.fleet = {f'r{i}': 's' for i in range(robots)}
        self.v1 = self.ref(1)

    def ref(self, version, size=6000):
        p = self.tmp / f'v{version}.onnx'
        p.write_bytes(bytes([version]) * size)
        return ModelRef('m', version, hashlib.sha256(p.read_bytes()).hexdigest(), size, 320)

    def create(self, rid, cand, champion=None, steps=(1.0,), **kw):
        base = dict(steps=steps, gates=GateConfig(min_frames=100, min_windows=2),
                    observe_s=5.0, acceptance=Acceptance(watch_s=1.0), resend_s=30.0)
        base.update(kw)
        spec = RolloutSpec(rid, cand, champion or self.v1, self.fleet, **base)
        self.ctl.create(spec, self.tmp / f'v{cand.version}.onnx', T0)
        return spec

    def active(self, robot, ref, t):
        self.ctl.on_status(robot, ModelStatus('active', active=ref, stamp=t), t)

    def commands_to(self, robot):
        return [c for topic, c in self.sent if c['robot_id'] == robot]


def test_a_new_rollout_does_not_strand_robots_mid_rollback(tmp_path):
    """r-1 fails with r3 offline on its candidate; r-2 starts: r3 is still rolled back."""
    c = Ctl(tmp_path)
    v2, v3 = c.ref(2), c.ref(3, 7000)
    for r in c.fleet:
        c.active(r, c.v1, T0)
    c.create('r-1', v2)
    c.ctl.step(T0 + 1, frozenset(c.fleet))
    for r in c.fleet:
        c.active(r, v2, T0 + 2)
    c.ctl.abort('r-1', T0 + 3)             # or a gate failure
    online = frozenset(['r0', 'r1', 'r2'])   # r3 offline during the rollback
    c.ctl.step(T0 + 4, online)
    for r in online:
        c.active(r, c.v1, T0 + 5)
    c.ctl.step(T0 + 6, online)
    # operator starts the next rollout; r3 is still on the failed v2
    c.create('r-2', v3, steps=(0.25, 1.0))
    first = c.ctl.waves(c.ctl.spec('r-2'))[0]
    print('r-2 first wave', first)
    before = len(c.commands_to('r3'))
    c.ctl.step(T0 + 100, frozenset(c.fleet))      # r3 back online
    c.ctl.step(T0 + 200, frozenset(c.fleet))
    got = c.commands_to('r3')[before:]
    print('commands to r3 after it returned:', [(x['action'], x['model']['version']) for x in got])
    # abort r-2 in its first step: r3 should end on the champion
    c.ctl.abort('r-2', T0 + 201)
    for t in range(5):
        c.ctl.step(T0 + 300 + 100 * t, frozenset(c.fleet))
    got = c.commands_to('r3')[before:]
    print('after abort of r-2:', [(x['action'], x['model']['version']) for x in got])
    print('r3 active:', c.ctl._active_sha('r3') == v2.sha256 and 'v2 (failed candidate)')
    assert c.ctl._active_sha('r3') == c.v1.sha256 or any(
        x['model']['version'] == 1 for x in got), 'r3 stranded on the failed candidate v2'


def test_a_late_expired_refusal_does_not_fail_the_rollout(tmp_path):
    """The detector's 'rejected: expired: N s ago' is transient, not a failure."""
    c = Ctl(tmp_path)
    v2 = c.ref(2)
    for r in c.fleet:
        c.active(r, c.v1, T0)
    c.create('r-1', v2)
    c.ctl.step(T0 + 1, frozenset(c.fleet))
    cmd = c.commands_to('r0')[-1]
    # What ModelManager._open reports for a command that expired before it reached it
    reason = 'rejected: expired 12 s ago'
    c.ctl.on_status('r0', ModelStatus('failed', 'r-1', cmd['revision'], v2, c.v1, reason,
                                      {}, T0 + 2), T0 + 2)
    print(c.ctl.state('r-1'), c.ctl.status_reason('r-1'))
    assert c.ctl.state('r-1') == 'running', 'a clock refusal failed the whole rollout'


def test_transient_refusals_are_resent_at_the_resend_period(tmp_path):
    """A robot answering 'rejected: not_yet_valid' is sent again only every resend_s."""
    c = Ctl(tmp_path, robots=1)
    v2 = c.ref(2)
    c.active('r0', c.v1, T0)
    c.create('r-1', v2, step_timeout_s=5.0)
    t = T0
    for _ in range(600):                       # 60 s of 0.1 s ticks
        t += 0.1
        c.ctl.step(t, frozenset(['r0']))
        cmd = c.commands_to('r0')[-1]
        c.ctl.on_status('r0', ModelStatus(
            'failed', 'r-1', cmd['revision'], v2, c.v1,
            'rejected: not_yet_valid: issued 40 s in the future (clock skew?)', {}, t), t)
    n = len(c.commands_to('r0'))
    print('commands in 60 s:', n, 'state', c.ctl.state('r-1'), c.ctl.status_reason('r-1'))
    assert n <= 60 / 30 + 2, f'{n} commands in 60 s (resend_s 30)'


def test_the_last_step_is_judged_on_errors_and_stops_too(tmp_path):
    """Every frame an error and a stop on a single-step rollout: refused, not promoted."""
    c = Ctl(tmp_path, robots=2)
    v2 = c.ref(2)
    for r in c.fleet:
        c.active(r, c.v1, T0)
    c.create('r-1', v2)
    c.ctl.step(T0 + 1, frozenset(c.fleet))
    for r in c.fleet:
        c.active(r, v2, T0 + 2)
    c.ctl.step(T0 + 3, frozenset(c.fleet))
    t = T0 + 3
    for _ in range(6):
        t += 2
        for r in c.fleet:
            for _ in range(60):
                c.ctl.on_stop(r)
            c.ctl.on_metrics(r, ModelMetrics(v2, 2.0, 60, 60, 10.0, 20.0, 0.0, t), t)
        c.ctl.step(t, frozenset(c.fleet))
    print(c.ctl.state('r-1'), c.ctl.status_reason('r-1'))
    assert c.ctl.state('r-1') != 'succeeded', \
        'promoted with 100% errors, 0 detections, 1000 stops/1000 frames'
