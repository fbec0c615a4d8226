"""The perception sub-commands of ``cobot-hybrid``: detect, bench, quantize, export, replay...

The dispatcher is :mod:`cobot_hybrid_cli`; it calls :func:`register` and maps :data:`ERRORS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cobot_hybrid_perception.errors import PerceptionError
from cobot_hybrid_ros.errors import ImageCodecError

__all__ = ['ERRORS', 'register']

#: What the perception sub-commands raise for bad input (one line, exit status 2).
ERRORS = (PerceptionError, ImageCodecError)


def _detector_args(parser: argparse.ArgumentParser) -> None:
    from cobot_hybrid_perception.backends import BACKENDS

    parser.add_argument('--model', default='default',
                        help='default (YOLO11n-pose from the cache) or a '
                             '.onnx/.engine/.tflite/.pt')
    parser.add_argument('--backend', default='auto', choices=BACKENDS,
                        help='auto: the fastest measured on this machine (cached)')
    parser.add_argument('--imgsz', type=int, default=0,
                        help="0: the model's own input size (640 for the default model)")
    parser.add_argument('--precision', default='fp16', choices=('fp32', 'fp16', 'int8'),
                        help='CPU backends run fp32, or int8 from an INT8 (quantize) model')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads (0: default)')
    parser.add_argument('--openvino-device', default='CPU',
                        help='backend openvino: CPU, GPU, GPU.<n> or NPU')


def _cmd_detect(args: argparse.Namespace) -> int:
    from cobot_hybrid_perception.detector import Detector, DetectorConfig
    from cobot_hybrid_perception.media import load_image

    detector = Detector(DetectorConfig(model=args.model, backend=args.backend,
                                       imgsz=args.imgsz, precision=args.precision,
                                       conf=args.conf, threads=args.threads,
                                       openvino_device=args.openvino_device))
    if not args.json:
        print(f'# {detector.backend.name} {detector.backend.precision}, model '
              f'{detector.model_path.name} ({detector.model_hash}); {detector.backend_reason}',
              file=sys.stderr)
    failed = 0
    try:
        for image_path in args.images:
            try:
                image = load_image(Path(image_path), 'bgr8')
                detections, times = detector.detect(image)
            except PerceptionError as exc:
                print(f'{image_path}: {exc}', file=sys.stderr)
                failed += 1
                continue
            if args.json:
                print(json.dumps({'image': image_path, 'detections': detections.to_dicts()}))
                continue
            print(f'{image_path}: {len(detections)} detections ({times.total_ms:.1f} ms)')
            for det in detections.to_dicts():
                print(f'  {det["class_name"]:<12} {det["score"]:.3f} '
                      f'[{", ".join(f"{v:.1f}" for v in det["bbox_xyxy"])}]'
                      f'{" +keypoints" if det["keypoints"] is not None else ""}')
    finally:
        detector.close()
    return 1 if failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from cobot_hybrid_perception.backends import BackendOptions
    from cobot_hybrid_perception.models import export_onnx, model_cache_dir

    source = Path(args.model)
    if not source.is_file() or source.suffix.lower() not in ('.pt', '.onnx'):
        raise PerceptionError(f'export needs an Ultralytics .pt checkpoint or a .onnx model; '
                              f'{source} is neither')
    if source.suffix.lower() == '.onnx':
        if args.format == 'onnx' and not args.engine:
            raise PerceptionError(f'{source} is ONNX already: export makes ONNX from a .pt '
                                  'checkpoint; for a .onnx give --format litert or --engine')
        if args.imgsz is not None:
            raise PerceptionError(f'--imgsz is for a .pt export; {source} keeps the size it '
                                  'was exported at')
        onnx_path = source
    else:
        imgsz = args.imgsz or 640
        onnx_path = export_onnx(source, imgsz, source.with_name(f'{source.stem}-{imgsz}.onnx'))
        print(onnx_path)
    if args.format == 'litert':
        from cobot_hybrid_perception.litert_model import export_litert

        tflite, sidecar = export_litert(onnx_path, Path(args.output) if args.output else None)
        print(f'# metadata sidecar {sidecar}', file=sys.stderr)
        print(tflite)
    if args.engine:
        from cobot_hybrid_perception.backends.tensorrt_backend import TensorRTBackend

        backend = TensorRTBackend(onnx_path, BackendOptions(
            precision=args.precision, cache_dir=model_cache_dir(),
            calib_dir=Path(args.calib) if args.calib else None))
        try:
            print(f'engine cached for {backend.gpu_name} ({backend.precision}) under '
                  f'{model_cache_dir() / "engines"}')
        finally:
            backend.close()
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from cobot_hybrid_perception.models import ensure_default_models

    for path in ensure_default_models(tuple(args.sizes)):
        print(path)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from cobot_hybrid_perception.bench_report import format_table, seed_table, write_report
    from cobot_hybrid_perception.runtime_bench import BenchSettings, run_bench

    settings = BenchSettings(model=args.model, backends=tuple(args.backends),
                             precisions=tuple(args.precisions), imgsz=args.imgsz,
                             runs=args.runs, images=args.images, frames=args.frames,
                             calib=args.calib, threads=args.threads, timeout_s=args.timeout)
    report = run_bench(settings)
    if args.report:
        html_path, png_path = write_report(report, Path(args.report))
        print(f'# report: {html_path} and {png_path}', file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_table(report))
    if args.seed_table:
        print()
        print(seed_table(report))
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from cobot_hybrid_perception.quantize import quantize_int8

    report = quantize_int8(Path(args.model), Path(args.calib), Path(args.output)
                           if args.output else None, args.images, args.holdout,
                           args.holdout_frames)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f'wrote {report["output"]} (calibrated on {report["calibration_images"]} images, '
          f'recorded in {report["calibration_record"]})')
    left_out = (f'; {report["holdout_excluded"]} calibration images among them left out'
                if report['holdout_excluded'] else '')
    if report['recall'] is None:
        print(f'no agreement measured: {report["holdout_images"]} held-out images '
              f'({report["holdout"]}){left_out}')
    else:
        print(f'agreement with FP32 on {report["holdout_images"]} held-out images '
              f'({report["holdout"]}): recall {report["recall"]:.3f}, mean IoU '
              f'{report["mean_iou"]:.3f}{left_out}')
    return 0


def _cmd_model_card(args: argparse.Namespace) -> int:
    import time

    from cobot_hybrid_perception.model_card_eval import CardRequest, measure_card
    from cobot_hybrid_protocol.model_card import card_text, write_card

    card = measure_card(CardRequest(
        model=Path(args.model), name=args.name, version=args.version,
        champion=Path(args.champion) if args.champion else None, images=tuple(args.images),
        imgsz=args.imgsz, runs=args.runs, frames=args.frames, threads=args.threads,
        conf=args.conf, iou=args.iou, max_det=args.max_det), now_s=time.time())
    if not args.out:
        print(card_text(card), end='')
        return 0
    try:
        write_card(card, Path(args.out))
    except OSError as exc:
        raise PerceptionError(f'cannot write the card to {args.out}: {exc.strerror}') from None
    m = card.metrics
    versus = (f', agreement {m.agreement:.3f} with {m.champion_sha256[:12]}'
              if m.agreement is not None and m.champion_sha256 else ', no champion')
    print(f'wrote {args.out}: {card.model.label} {card.model.imgsz} {card.model.task} '
          f'{card.model.precision}, {m.images} images, p50 {m.latency_p50_ms:.1f} ms, '
          f'p99 {m.latency_p99_ms:.1f} ms{versus}')
    return 0


def _card_settings(parser: argparse.ArgumentParser) -> None:
    """Add --conf, --iou, --max-det: the detector settings a card records (DetectorConfig's)."""
    from cobot_hybrid_perception.detector import DetectorConfig
    from cobot_hybrid_protocol.settings import specs

    for name in ('conf', 'iou', 'max_det'):
        default, spec = specs(DetectorConfig)[name]
        parser.add_argument('--' + name.replace('_', '-'), type=type(default),
                            default=default, help=spec.text())


def _fmt(value: Any) -> str:
    return f'{value:.6g}' if isinstance(value, float) else str(value)


def _cmd_replay(args: argparse.Namespace) -> int:
    from cobot_hybrid_perception.safety_replay import load_params, monitor_topics, replay

    settings = load_params([Path(p) for p in args.params or []], args.namespace) \
        if args.params or not args.print_topics else None
    if args.print_topics:
        speed = settings.robot_speed_type if settings else 'twist'
        geometry = settings.safety.robot_geometry if settings else 'tcp_point'
        print(' '.join(f'{t}:{m}' for t, m in
                       monitor_topics(args.namespace, speed, geometry).items()))
        return 0
    if not args.bag:
        raise PerceptionError('replay: name the bag to replay (or --print-topics)')
    assert settings is not None
    result = replay(Path(args.bag), settings, args.namespace)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0 if result.ok else 1
    print(f'{args.bag}: {result.decisions} decisions, {result.compared} compared, '
          f'{result.matched} matched, {len(result.mismatches)} mismatched '
          f'({result.skipped_before_sync} before the first fault stop, {result.forced} forced '
          f'stops applied as recorded, {result.input_errors} inputs raised)')
    print('  recorded states: ' + ', '.join(f'{k} {v}' for k, v in sorted(result.states.items()))
          + '; inputs fed: ' + ', '.join(f'{k} {v}' for k, v in sorted(result.inputs.items())))
    for note in result.notes:
        print(f'  note: {note}')
    for m in result.mismatches[:args.show]:
        print(f'  decision {m.index} at {m.now_s:.9f}:')
        for name, (recorded, replayed) in m.differences.items():
            print(f'    {name}: recorded {_fmt(recorded)}, replayed {_fmt(replayed)}')
        print(f'    recorded reason: {m.recorded_reason}\n    replayed reason: '
              f'{m.replayed_reason}')
    print('replay: every decision matched' if result.ok else 'replay: MISMATCH')
    return 0 if result.ok else 1


def register(subparsers: Any) -> None:
    """Add the perception sub-commands."""
    rep = subparsers.add_parser(
        'replay', help="replay a bag's safety monitor inputs offline and check each recorded "
                       'decision (exit 1 on a mismatch)')
    rep.add_argument('bag', nargs='?', default='', help='the bag (cobot-hybrid record)')
    rep.add_argument('--params', action='append', metavar='YAML',
                     help='a params file the monitor ran with (repeat in its order, e.g. '
                          'config/safety.yaml then an override)')
    rep.add_argument('--namespace', default='/', help="the monitor's namespace")
    rep.add_argument('--json', action='store_true', help='print the result as one JSON object')
    rep.add_argument('--show', type=int, default=10, help='mismatches to print')
    rep.add_argument('--print-topics', action='store_true',
                     help='print the TOPIC:TYPE list to give cobot-hybrid record --topics')
    rep.set_defaults(func=_cmd_replay)
    detect = subparsers.add_parser('detect', help='detect objects in image files')
    detect.add_argument('images', nargs='+', metavar='IMAGE')
    _detector_args(detect)
    detect.add_argument('--conf', type=float, default=0.25)
    detect.add_argument('--json', action='store_true', help='one JSON object per image')
    detect.set_defaults(func=_cmd_detect)

    bench = subparsers.add_parser(
        'bench', help='compare every runtime and precision available here on your frames')
    bench.add_argument('--model', default='default', help='FP32 .onnx (default: YOLO11n-pose '
                       'of the cache); its -int8.onnx and .tflite beside it are rows too')
    bench.add_argument('--backends', nargs='+', default=['all'],
                       help='backends to run (default: all), e.g. ort-cpu openvino')
    bench.add_argument('--precisions', nargs='+', default=['fp32', 'fp16', 'int8'],
                       choices=('fp32', 'fp16', 'int8'), help='precisions to run (default: all)')
    bench.add_argument('--imgsz', type=int, default=0,
                       help="0: the model's own input size (640 for the default model)")
    bench.add_argument('--runs', type=int, default=50,
                       help='timed frames per row, at least (frames cycle)')
    bench.add_argument('--images', default='samples',
                       help='samples (photos in installed packages), a folder, an image, a glob '
                       'or a video')
    bench.add_argument('--frames', type=int, default=200,
                       help='read at most this many frames of --images (streamed)')
    bench.add_argument('--calib', default='', help='images for TensorRT INT8 calibration '
                       '(those frames are left out of its agreement)')
    bench.add_argument('--threads', type=int, default=0, help='CPU threads (0: default)')
    bench.add_argument('--timeout', type=float, default=1200.0,
                       help='seconds one row may take (engine builds included)')
    bench.add_argument('--json', action='store_true', help='the whole report as JSON')
    bench.add_argument('--report', default='', metavar='DIR',
                       help='write DIR/bench.html (self-contained) and DIR/bench.png')
    bench.add_argument('--seed-table', action='store_true',
                       help='also print the runtime table as markdown')
    bench.set_defaults(func=_cmd_bench)

    quantize = subparsers.add_parser('quantize', help='static INT8 (QDQ) ONNX from your images')
    quantize.add_argument('model', help='FP32 .onnx model')
    quantize.add_argument('--calib', required=True, help='folder of calibration images')
    quantize.add_argument('--holdout', default='', metavar='SPEC',
                          help='images to score INT8 against FP32 on (folder, image, glob, '
                          'video); default: every 5th image of --calib, not calibrated on; '
                          'none: no score')
    quantize.add_argument('--holdout-frames', type=int, default=200,
                          help='score on at most this many held-out frames')
    quantize.add_argument('--output', default='', help='default: <model>-int8.onnx')
    quantize.add_argument('--images', type=int, default=64, help='calibration images to use')
    quantize.add_argument('--json', action='store_true')
    quantize.set_defaults(func=_cmd_quantize)

    export = subparsers.add_parser(
        'export', help='export a .pt to ONNX, an ONNX to LiteRT (.tflite) or a TensorRT engine')
    export.add_argument('model', help='Ultralytics .pt checkpoint, or a .onnx for --format '
                        'litert / --engine')
    export.add_argument('--imgsz', type=int, default=None, help='.pt export size (640)')
    export.add_argument('--format', default='onnx', choices=('onnx', 'litert'),
                        help='litert: also convert the ONNX to .tflite with onnx2tf in the '
                             'export environment (make litert-model creates it)')
    export.add_argument('--output', default='',
                        help='--format litert: the .tflite path (default: beside the ONNX)')
    export.add_argument('--engine', action='store_true',
                        help='also build and cache the TensorRT engine (needs TensorRT)')
    export.add_argument('--precision', default='fp16', choices=('fp32', 'fp16', 'int8'))
    export.add_argument('--calib', default='', help='images for INT8 calibration')
    export.set_defaults(func=_cmd_export)

    models = subparsers.add_parser('models', help='export the default model into the cache')
    models.add_argument('--sizes', type=int, nargs='+', default=[640, 320])
    models.set_defaults(func=_cmd_models)

    card = subparsers.add_parser(
        'model-card', help='measure the card of a model version for the registry (cloud side)')
    card.add_argument('model', metavar='MODEL.onnx')
    card.add_argument('--name', required=True, help='registered model name, e.g. yolo11n-pose')
    card.add_argument('--version', type=int, required=True,
                      help='version number (the registry sets the one it assigns)')
    card.add_argument('--champion', default='', metavar='CHAMPION.onnx',
                      help='score agreement with this model (the current champion)')
    card.add_argument('--images', nargs='+', default=['samples'], metavar='SPEC',
                      help='held-out images: samples (photos in installed packages), '
                      'sample:<name>, folders, images, globs or videos')
    card.add_argument('--imgsz', type=int, default=0, help="0: the model's own input size")
    card.add_argument('--runs', type=int, default=20,
                      help='timed frames, at least (the images cycle)')
    card.add_argument('--frames', type=int, default=200,
                      help='read at most this many frames of --images')
    card.add_argument('--threads', type=int, default=0, help='CPU threads (0: default)')
    _card_settings(card)
    card.add_argument('--out', default='', metavar='card.json',
                      help='write the card here (default: print it)')
    card.set_defaults(func=_cmd_model_card)
