"""The detector's health: OK, WARN after a failed frame, ERROR after three in a row."""

from __future__ import annotations

import pytest

from cobot_hybrid_perception.detector import StageTimes
from cobot_hybrid_perception.detector_stats import (
    DIAG_PERIOD_S,
    FAILURES_FOR_ERROR,
    DetectorStats,
    diagnostics_due,
)

IDENTITY = {'backend': 'ort-cpu', 'precision': 'fp32', 'model': 'yolo.onnx',
            'model_hash': 'abc123'}


def _times() -> StageTimes:
    return StageTimes(preprocess_ms=1.0, infer_ms=10.0, postprocess_ms=0.5)


@pytest.mark.parametrize(('failures', 'level'), [
    (0, 'OK'), (1, 'WARN'), (FAILURES_FOR_ERROR - 1, 'WARN'), (FAILURES_FOR_ERROR, 'ERROR'),
    (FAILURES_FOR_ERROR + 5, 'ERROR')])
def test_level_follows_failures_in_a_row(failures: int, level: str) -> None:
    stats = DetectorStats()
    for i in range(failures):
        stats.fail(f'bad frame {i}')
    assert FAILURES_FOR_ERROR == 3
    assert stats.level() == level
    assert stats.message() == ('ok' if level == 'OK' else f'bad frame {failures - 1}')


def test_a_good_frame_ends_the_error_but_the_failures_stay_counted() -> None:
    stats = DetectorStats()
    for _ in range(4):
        stats.fail('32FC1 cannot be converted')
    assert stats.level() == 'ERROR'
    stats.record(0.2, _times(), 12.0)
    assert (stats.level(), stats.message()) == ('OK', 'ok')
    assert stats.diagnostic_values(IDENTITY)['failures'] == '4'


def test_diagnostic_values_format_floats_and_end_with_the_identity() -> None:
    stats = DetectorStats()
    stats.record(0.25, _times(), 12.5)
    stats.dropped = 2
    values = stats.diagnostic_values(IDENTITY)
    assert values['infer_ms_p50'] == '10.00'
    assert values['total_ms_p50'] == '12.50'
    assert values['convert_ms_p50'] == '0.25'
    assert values['fps'] == '0.00'          # one frame: no rate yet
    assert (values['processed'], values['dropped'], values['failures']) == ('1', '2', '0')
    assert list(values)[-4:] == list(IDENTITY)
    assert all(isinstance(v, str) for v in values.values())


@pytest.mark.parametrize(('now', 'last', 'force', 'due'), [
    (10.0, 9.0, False, True),
    (10.0, 10.0 - DIAG_PERIOD_S * 0.5, False, True),
    (10.0, 9.6, False, False),        # a tick right after a forced publication
    (10.0, 9.99, True, True),
    (10.0, 0.0, False, True),
])
def test_diagnostics_due(now: float, last: float, force: bool, due: bool) -> None:
    assert diagnostics_due(now, last, force) is due
