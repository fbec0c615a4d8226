"""Frame sources for demos and tests: real photos shipped in packages, image files, videos.

``open_source('samples')`` cycles the photos shipped inside installed Python packages
(scikit-image's astronaut, camera, coffee; Ultralytics' bus and zidane when installed), so a
demo or test has real pixels with nothing downloaded at run time. Any image file, folder of
images or video file (read with OpenCV) works the same way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from cobot_hybrid_perception.errors import ConfigError, PerceptionError
from cobot_hybrid_protocol.settings import check_settings, setting
from cobot_hybrid_ros.image_codec import convert_color

__all__ = [
    'Frame',
    'ImageSourceConfig',
    'MediaSourceError',
    'SAMPLE_PHOTOS',
    'iter_frames',
    'load_image',
    'sample_photo_path',
]

IMAGE_SUFFIXES = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp'})
#: Encodings a frame source can produce (8-bit colour or mono).
FRAME_ENCODINGS = ('bgr8', 'rgb8', 'mono8')
VIDEO_SUFFIXES = frozenset({'.mp4', '.avi', '.mkv', '.mov', '.webm', '.mpg', '.mpeg'})

#: name -> (python package, file inside it, people in the photo)
SAMPLE_PHOTOS: dict[str, tuple[str, str, int]] = {
    'astronaut': ('skimage', 'data/astronaut.png', 1),
    'camera': ('skimage', 'data/camera.png', 1),
    'coffee': ('skimage', 'data/coffee.png', 0),
    'bus': ('ultralytics', 'assets/bus.jpg', 4),
    'zidane': ('ultralytics', 'assets/zidane.jpg', 2),
}


class MediaSourceError(PerceptionError):
    """A frame source (photo, folder, video) cannot be opened or read."""


@dataclass(frozen=True)
class Frame:
    """One frame of a source: pixels in the requested encoding and where they came from."""

    index: int
    pixels: npt.NDArray[Any]
    encoding: str
    label: str


def sample_photo_path(name: str) -> Path:
    """Path of a sample photo inside its installed package (MediaSourceError if missing)."""
    if name not in SAMPLE_PHOTOS:
        raise MediaSourceError(
            f'unknown sample photo {name!r}; known: {", ".join(sorted(SAMPLE_PHOTOS))}')
    package, relative, _ = SAMPLE_PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MediaSourceError(
            f'sample photo {name!r} ships in the Python package {package!r}, which is not '
            'installed; run `make setup` or pick another photo')
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MediaSourceError(f'sample photo {name!r} not found at {path}')
    return path


def available_samples() -> list[str]:
    """Names of the sample photos whose packages are installed here."""
    names = []
    for name in SAMPLE_PHOTOS:
        try:
            sample_photo_path(name)
        except MediaSourceError:
            continue
        names.append(name)
    return names


def load_image(path: str | Path, encoding: str = 'bgr8') -> npt.NDArray[Any]:
    """Read an image file as 8-bit pixels in ``encoding`` (bgr8, rgb8 or mono8)."""
    path = Path(path)
    if not path.is_file():
        raise MediaSourceError(f'image file {path} does not exist')
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if pixels is None:
        raise MediaSourceError(f'{path} is not a readable image (corrupt or unknown format)')
    return _to_encoding(pixels, encoding)


def _require_frame_encoding(encoding: str) -> None:
    if encoding not in FRAME_ENCODINGS:
        raise MediaSourceError(f'frame sources produce bgr8, rgb8 or mono8, not {encoding!r}')


def _to_encoding(bgr: npt.NDArray[Any], encoding: str) -> npt.NDArray[Any]:
    _require_frame_encoding(encoding)
    return np.ascontiguousarray(convert_color(bgr, 'bgr8', encoding))


def _resolve(spec: str) -> list[tuple[str, Path]]:
    """Turn a source spec into (label, path) entries; videos stay one entry."""
    if spec == 'samples':
        names = available_samples()
        if not names:
            raise MediaSourceError('no sample photos installed (scikit-image missing?)')
        return [(name, sample_photo_path(name)) for name in names]
    if spec.startswith('sample:'):
        name = spec.split(':', 1)[1]
        return [(name, sample_photo_path(name))]
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MediaSourceError(f'folder {path} holds no images ({sorted(IMAGE_SUFFIXES)})')
        return [(p.name, p) for p in files]
    if path.is_file():
        return [(path.name, path)]
    raise MediaSourceError(
        f'source {spec!r} is neither "samples", "sample:<name>", a folder, an image nor a video')


def _video_frames(path: Path) -> Iterator[npt.NDArray[Any]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise MediaSourceError(f'video {path} cannot be opened by OpenCV')
    try:
        produced = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            produced += 1
            yield bgr
        if produced == 0:
            raise MediaSourceError(f'video {path} has no readable frames')
    finally:
        capture.release()


def iter_frames(spec: str, encoding: str = 'bgr8', loop: bool = False,
                max_frames: int = 0) -> Iterator[Frame]:
    """Frames of a source in order; ``loop`` restarts it, ``max_frames`` > 0 stops it.

    The source is resolved now, so a missing file or unknown sample raises here, not on the
    first frame.
    """
    _require_frame_encoding(encoding)
    return _generate(_resolve(spec), encoding, loop, max_frames)


def _generate(entries: list[tuple[str, Path]], encoding: str, loop: bool,
              max_frames: int) -> Iterator[Frame]:
    cache: dict[Path, npt.NDArray[Any]] = {}
    index = 0
    while True:
        for label, path in entries:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                for frame_no, bgr in enumerate(_video_frames(path)):
                    yield Frame(index, _to_encoding(bgr, encoding), encoding,
                                f'{label}#{frame_no}')
                    index += 1
                    if max_frames and index >= max_frames:
                        return
                continue
            if path not in cache:
                cache[path] = load_image(path, encoding)
            yield Frame(index, cache[path], encoding, label)
            index += 1
            if max_frames and index >= max_frames:
                return
        if not loop:
            return


@dataclass(frozen=True)
class ImageSourceConfig:
    """Validated parameters of ``image_source_node``."""

    source: str = setting('samples', 'samples | sample:<name> | image file | folder | video file')
    rate_hz: float = setting(10.0, 'publish rate', unit='Hz', low=0.1, high=240.0, live=True)
    encoding: str = setting('bgr8', 'published encoding', choices=FRAME_ENCODINGS)
    frame_id: str = setting('camera_optical_frame', 'header.frame_id of the published images',
                            live=True)
    loop: bool = setting(True, 'restart the source when it ends')
    max_frames: int = setting(0, 'stop after this many frames (0 = never)', low=0, high=2**31 - 1)
    wait_for_subscribers: bool = setting(
        False, 'hold the first frame until a subscriber matched (demos and benchmarks; a '
        'camera does not wait)', live=True)

    def __post_init__(self) -> None:
        check_settings(self, ConfigError)
        if not self.source:
            raise ConfigError('source is empty; use "samples", "sample:<name>" or a path')
        if not 0.1 <= self.rate_hz <= 240.0:
            raise ConfigError(f'rate_hz {self.rate_hz} outside 0.1..240 Hz')
        if self.encoding not in FRAME_ENCODINGS:
            raise ConfigError(f'encoding {self.encoding!r}: use bgr8, rgb8 or mono8')
        if self.max_frames < 0:
            raise ConfigError(f'max_frames {self.max_frames} < 0 (0 means unlimited)')
