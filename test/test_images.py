"""The container images, checked without building them (`make images` builds and runs them).

Static: deploy/images.env names the images and carries setup.py's version; every Containerfile
runs as uid 10001, has a HEALTHCHECK, declares the state volume, pins its base (no ``latest``),
copies only files that exist (or that tools/build_images.sh makes) and that .dockerignore lets
into the build context; the cloud image installs only packages of requirements/base.txt.
Run: the edge entry point (deploy/images/entrypoint-edge.sh) starts the nodes edge.launch.py
starts with the same shipped parameter files, brings the stack up in real processes, reports
it healthy, and stops it cleanly; the health check fails while no stack runs.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import child_env
from launch_stub import evaluate

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / 'deploy' / 'images'
CONTAINERFILES = sorted(IMAGES.glob('Containerfile.*'))
ENTRYPOINT = IMAGES / 'entrypoint-edge.sh'
GENERATED = 'build/images/'   # filled by tools/build_images.sh before a build


def images_env() -> dict[str, str]:
    pairs = (line.split('=', 1) for line in (ROOT / 'deploy' / 'images.env').read_text()
             .splitlines() if line.strip() and not line.startswith('#'))
    return {key.strip(): value.strip() for key, value in pairs}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined as docker does."""
    text = re.sub(r'\\\n', '', path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            word, _, rest = line.partition(' ')
            found.append((word.upper(), rest.strip()))
    return found


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == 'FROM')
    return steps[last_from:]


def test_there_are_the_three_containerfiles() -> None:
    assert [p.name for p in CONTAINERFILES] == [
        'Containerfile.cloud', 'Containerfile.edge', 'Containerfile.edge-l4t']


def test_images_env_names_the_images_and_carries_the_package_version() -> None:
    env = images_env()
    version = re.search(r"version='([^']+)'", (ROOT / 'setup.py').read_text())
    assert version is not None
    assert env == {'CLOUD_IMAGE': 'cobot-hybrid-cloud', 'EDGE_IMAGE': 'cobot-hybrid-edge',
                   'VERSION': version.group(1)}
    assert env['VERSION'] != 'latest'


@pytest.mark.parametrize('path', CONTAINERFILES, ids=lambda p: p.name)
def test_the_final_stage_runs_as_uid_10001_with_a_health_check_and_the_volume(
        path: Path) -> None:
    stage = final_stage(path)
    users = [args for word, args in stage if word == 'USER']
    assert users and users[-1] == '10001:10001', f'{path.name}: USER {users}'
    run = ' '.join(args for word, args in stage if word == 'RUN')
    assert 'groupadd --gid 10001 cobot' in run and 'useradd --uid 10001 --gid 10001' in run
    checks = [args for word, args in stage if word == 'HEALTHCHECK']
    assert len(checks) == 1 and ' CMD ' in f' {checks[0]} ', checks
    assert ('VOLUME', '["/var/lib/cobot_hybrid"]') in stage
    env = ' '.join(args for word, args in stage if word == 'ENV')
    assert 'COBOT_HYBRID_DATA_DIR=/var/lib/cobot_hybrid' in env
    assert 'PYTHONDONTWRITEBYTECODE=1' in env   # nothing written beside the code
    assert any(word == 'ENTRYPOINT' for word, _ in stage)


@pytest.mark.parametrize('path', CONTAINERFILES, ids=lambda p: p.name)
def test_every_base_image_is_pinned_never_latest(path: Path) -> None:
    steps = instructions(path)
    args = dict(re.match(r'(\w+)=?(.*)', a).groups() for w, a in steps  # type: ignore[union-attr]
                if w == 'ARG')
    stages = {m.group(1) for w, a in steps if w == 'FROM'
              for m in [re.search(r'\bAS\s+(\w+)', a, re.IGNORECASE)] if m}
    for word, rest in steps:
        if word != 'FROM':
            continue
        image = re.sub(r'\$\{(\w+)\}', lambda m: args.get(m.group(1), ''), rest.split()[0])
        assert image, f'{path.name}: FROM {rest} has no default'
        assert image in stages or re.search(r':[\w.-]+$', image.split('/')[-1]), \
            f'{path.name}: {image} has no tag (that means latest)'
        assert not image.endswith(':latest'), f'{path.name}: {image}'
    assert 'latest' not in path.read_text().lower()


def test_the_jetson_variant_is_on_jetpack_6_with_tensorrt_from_the_base() -> None:
    text = (IMAGES / 'Containerfile.edge-l4t').read_text()
    assert re.search(r'ARG L4T_BASE=nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+\n', text)
    assert "python3 -c 'import tensorrt" in text
    assert '--system-site-packages' in text   # the venv sees JetPack's tensorrt


def ignore_patterns() -> tuple[list[str], list[str]]:
    lines = [line.strip() for line in (ROOT / '.dockerignore').read_text().splitlines()
             if line.strip() and not line.startswith('#')]
    return ([p for p in lines if not p.startswith('!')],
            [p[1:].rstrip('/') for p in lines if p.startswith('!')])


def in_context(source: str) -> bool:
    """Whether the allow-list of .dockerignore lets ``source`` into the build context."""
    excluded, allowed = ignore_patterns()
    assert excluded[0] == '*', 'the .dockerignore is an allow-list'
    source = source.rstrip('/')
    return any(fnmatch.fnmatch(source, pattern) or fnmatch.fnmatch(source, pattern + '/*')
               for pattern in allowed)


def copy_sources(path: Path) -> list[str]:
    sources = []
    for word, args in instructions(path):
        if word in ('COPY', 'ADD') and '--from=' not in args:
            parts = [p for p in shlex.split(args) if not p.startswith('--')]
            sources += parts[:-1]
    return sources


@pytest.mark.parametrize('path', CONTAINERFILES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_build_context(path: Path) -> None:
    script = (ROOT / 'tools' / 'build_images.sh').read_text()
    sources = copy_sources(path)
    assert sources, path.name
    for source in sources:
        assert in_context(source), f'{path.name}: .dockerignore leaves {source} out'
        if source.startswith(GENERATED):
            folder = source[len('build/images/'):].strip('/')
            assert f'$OUT/{folder}' in script, f'{source}: tools/build_images.sh does not make it'
        else:
            assert (ROOT / source).exists(), f'{path.name}: COPY {source}: no such file'
    package_dirs = {p.name + '/' for p in ROOT.glob('cobot_hybrid_*') if p.is_dir()}
    assert package_dirs <= set(sources), f'{path.name} misses {package_dirs - set(sources)}'


def test_the_cloud_image_installs_only_packages_of_the_requirements() -> None:
    """base.txt's runtime (no ROS) and the offload jobs' offload.txt, nothing else."""
    base = {re.split(r'[<>=\s#]', line)[0].lower() for line in
            (ROOT / 'requirements' / 'base.txt').read_text().splitlines()
            if line.strip() and not line.startswith('#')}
    run = ' && '.join(a for w, a in instructions(IMAGES / 'Containerfile.cloud') if w == 'RUN')
    install = re.search(r'constraints\.txt (.*?)(?:&&|$)', run)
    assert install is not None
    words = install.group(1).split()
    assert '-r' in words and words[words.index('-r') + 1] == '/src/requirements/offload.txt'
    packages = {w for n, w in enumerate(words) if w != '-r' and (n == 0 or words[n - 1] != '-r')}
    assert {'ortools', 'paho-mqtt', 'cryptography', 'onnxruntime'} <= packages <= base
    assert not {p for p in packages if p.startswith('ros-')}   # the cloud image has no ROS


def test_the_edge_image_keeps_dds_on_loopback_with_the_shipped_profile() -> None:
    env = ' '.join(a for w, a in final_stage(IMAGES / 'Containerfile.edge') if w == 'ENV')
    assert 'ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST' in env
    profile = re.search(r'FASTDDS_DEFAULT_PROFILES_FILE=\S+/share/cobot_hybrid/config/(\S+)', env)
    assert profile and (ROOT / 'config' / profile.group(1)).is_file()
    l4t = ' '.join(a for w, a in final_stage(IMAGES / 'Containerfile.edge-l4t') if w == 'ENV')
    assert 'ROS_LOCALHOST_ONLY=1' in l4t   # Humble's switch (Kilted ignores it)


def test_make_test_needs_no_image_tools() -> None:
    script = (ROOT / 'tools' / 'install_system_deps.sh').read_text()
    setup = script[script.index('setup_deps() {'):script.index('images_deps() {')]
    images = script[script.index('images_deps() {'):]
    for tool in ('podman', 'buildah', 'debootstrap'):
        assert tool not in setup and tool in images
    makefile = (ROOT / 'Makefile').read_text()
    assert re.search(r'^images: setup\n\ttools/install_system_deps\.sh --images$', makefile,
                     re.MULTILINE)
    assert not re.search(r'^test:.*images', makefile, re.MULTILINE)


def stack_nodes() -> dict[str, str]:
    """Node -> shipped parameter file, as the entry point starts them."""
    text = ENTRYPOINT.read_text()
    nodes = dict(re.findall(r'start (\w+_node) (\w+\.yaml)', text))
    assert 'lifecycle_manager_node --ros-args' in text
    nodes['lifecycle_manager_node'] = 'lifecycle_manager.yaml'
    return nodes


def test_the_entry_point_starts_what_edge_launch_starts_with_the_same_files() -> None:
    launch = evaluate(ROOT / 'launch' / 'edge.launch.py', image_source='true', executor='true',
                      driver='stop_trigger')
    shipped = {n.name: Path(n.params_files[0]).name for n in launch.nodes}
    assert stack_nodes() == shipped
    text = ENTRYPOINT.read_text()
    for name in ('safety_monitor_node', 'detector_node', 'driver_adapter_node'):
        assert re.search(rf'start {name} \S+ -p autostart:=false', text), name


def entry_env(tmp_path: Path, domain_id: int) -> dict[str, str]:
    return child_env(domain_id, {
        'PATH': f'{Path(sys.executable).parent}:{os.environ["PATH"]}',
        'COBOT_HYBRID_SHARE': str(ROOT),   # config/ as installed under share/cobot_hybrid
        'COBOT_HYBRID_RUN_DIR': str(tmp_path / 'run'),
        'COBOT_HYBRID_DATA_DIR': str(tmp_path / 'state'),
        'ROS_LOG_DIR': str(tmp_path / 'ros_log'),
        'AMENT_PREFIX_PATH': sys.prefix,
        'PARAMS_FILE': str(ROOT / 'config' / 'edge_overrides.yaml'),
        'ROBOT_ID': '007'})


def test_the_health_check_fails_while_no_stack_runs(tmp_path: Path) -> None:
    result = subprocess.run([str(ENTRYPOINT), 'health'], capture_output=True, text=True,
                            env=entry_env(tmp_path, 0), timeout=30, check=False)
    assert result.returncode == 1
    assert 'unhealthy: the stack has not started' in result.stderr


@pytest.mark.parametrize(('name', 'value'), [('DRIVER', 'ros2_control'),
                                             ('IMAGE_SOURCE', 'yes')])
def test_the_entry_point_refuses_a_bad_setting(tmp_path: Path, name: str, value: str) -> None:
    env = {**entry_env(tmp_path, 0), name: value}
    result = subprocess.run([str(ENTRYPOINT)], capture_output=True, text=True, env=env,
                            timeout=30, check=False)
    assert result.returncode == 2 and name in result.stderr
    assert not (tmp_path / 'run' / 'edge.pids').exists()


@pytest.mark.ros
@pytest.mark.slow
def test_the_entry_point_brings_the_stack_up_healthy_and_stops_it(
        tmp_path: Path, ros_domain_id: int) -> None:
    env = entry_env(tmp_path, ros_domain_id)
    log = (tmp_path / 'stack.log').open('wb')
    stack = subprocess.Popen([str(ENTRYPOINT)], stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120.0
        while not (tmp_path / 'run' / 'active').exists():
            assert stack.poll() is None, (tmp_path / 'stack.log').read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / 'stack.log').read_text()[-3000:]
            time.sleep(0.2)
        health = subprocess.run([str(ENTRYPOINT), 'health'], capture_output=True, text=True,
                                env=env, timeout=30, check=False)
        assert health.returncode == 0, health.stderr
        assert 'healthy: 4 nodes running' in health.stderr
        # The bridge keeps its state in the volume, under the robot id (a string: '007').
        assert (tmp_path / 'state' / '007').is_dir()
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=60) == 0, (tmp_path / 'stack.log').read_text()[-3000:]
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
            stack.wait(timeout=10)
        log.close()
    text = (tmp_path / 'stack.log').read_text()
    assert 'all 2 nodes active' in text and 'cobot-hybrid-edge: stopped' in text
