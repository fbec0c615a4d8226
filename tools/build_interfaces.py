"""Build the ROS interface packages of this repository into the current venv.

Two kinds, used by `make setup` where no ROS distribution provides them (PyPI-only ROS 2):

* ``tools/interfaces/*``: copies of upstream packages without a wheel (vision_msgs...). One
  that already imports is left alone, so a sourced ROS install is never shadowed;
* ``interfaces/*``: the suite's own (cobot_hybrid_msgs). Rebuilt whenever the definitions
  installed in the venv differ from the ones in the repository (an edited .msg is picked up
  by the next `make setup`), left alone when they are equal.

Run with the venv's interpreter: `.venv/bin/python tools/build_interfaces.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INTERFACES = ROOT / 'tools' / 'interfaces'
OWN_INTERFACES = ROOT / 'interfaces'
_DEFINITIONS = ('msg', 'srv', 'action')
_WHEEL_PYTHON = re.compile(r'/opt/python/cp\d+-cp\d+/(include/python[\d.]+|lib/python[\d.]+/'
                           r'site-packages/numpy/_core/include)')


def _fix_wheel_cmake_paths(prefix: Path) -> int:
    """Point the wheels' exported CMake files at this venv's Python and numpy headers."""
    import numpy

    py_include = sysconfig.get_paths()['include']
    np_include = numpy.get_include()
    fixed = 0
    for cmake_file in (prefix / 'share').glob('*/cmake/*.cmake'):
        text = cmake_file.read_text()
        if '/opt/python/' not in text:
            continue
        new = _WHEEL_PYTHON.sub(
            lambda m: py_include if m.group(1).startswith('include') else np_include, text)
        if new != text:
            cmake_file.write_text(new)
            fixed += 1
    return fixed


def _build(pkg_dir: Path, prefix: Path, build_root: Path, jobs: int) -> None:
    build_dir = build_root / pkg_dir.name
    build_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env['AMENT_PREFIX_PATH'] = str(prefix)
    env['CMAKE_PREFIX_PATH'] = str(prefix)
    env.setdefault('ROS_LOG_DIR', str(build_root / 'ros_log'))
    python = str(prefix / 'bin' / 'python')
    subprocess.run(['cmake', '-S', str(pkg_dir), '-B', str(build_dir),
                    f'-DCMAKE_INSTALL_PREFIX={prefix}', f'-DPython3_EXECUTABLE={python}',
                    '-DBUILD_TESTING=OFF', '-DCMAKE_BUILD_TYPE=Release'],
                   check=True, env=env)
    subprocess.run(['cmake', '--build', str(build_dir), '-j', str(jobs)], check=True, env=env)
    subprocess.run(['cmake', '--install', str(build_dir)], check=True, env=env)


def _definitions(root: Path) -> dict[str, bytes]:
    """Return the interface files (msg/srv/action) under a package or install share dir."""
    return {f'{kind}/{path.name}': path.read_bytes() for kind in _DEFINITIONS
            for path in sorted((root / kind).glob(f'*.{kind}'))}


def _up_to_date(pkg_dir: Path, prefix: Path) -> bool:
    """Whether the venv holds this package built from exactly these definitions."""
    if importlib.util.find_spec(pkg_dir.name) is None:
        return False
    return _definitions(prefix / 'share' / pkg_dir.name) == _definitions(pkg_dir)


def main(argv: list[str] | None = None) -> int:
    """Build the interface packages the venv lacks (or holds from older definitions)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--build-dir', type=Path, default=ROOT / 'build' / 'interfaces')
    parser.add_argument('--force', action='store_true', help='rebuild even if importable')
    parser.add_argument('--jobs', type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)

    prefix = Path(sys.prefix)
    if prefix == Path(sys.base_prefix):
        print('build_interfaces: run this with the venv interpreter (.venv/bin/python); '
              'refusing to install into the system Python', file=sys.stderr)
        return 2
    upstream = sorted(p for p in INTERFACES.iterdir() if (p / 'package.xml').exists())
    own = sorted(p for p in OWN_INTERFACES.iterdir() if (p / 'package.xml').exists())
    for pkg_dir in upstream + own:
        name = pkg_dir.name
        if not args.force and pkg_dir in upstream and importlib.util.find_spec(name) is not None:
            print(f'build_interfaces: {name} already importable, not rebuilt')
            continue
        if not args.force and pkg_dir in own and _up_to_date(pkg_dir, prefix):
            print(f'build_interfaces: {name} is up to date')
            continue
        if pkg_dir in own:   # no definition of a removed message is left behind
            for kind in _DEFINITIONS:
                shutil.rmtree(prefix / 'share' / name / kind, ignore_errors=True)
        fixed = _fix_wheel_cmake_paths(prefix)
        print(f'build_interfaces: building {name} into {prefix} '
              f'({fixed} wheel CMake files re-pointed at this venv)')
        _build(pkg_dir, prefix, args.build_dir, args.jobs)
        importlib.invalidate_caches()
        if importlib.util.find_spec(name) is None:
            print(f'build_interfaces: {name} built but does not import', file=sys.stderr)
            return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
