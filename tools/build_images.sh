#!/usr/bin/env bash
# Build the container images (`make images`) with buildah, as root, vfs storage, chroot
# isolation, then prove each one by running its entry point in it with `buildah run`.
#
#   tools/build_images.sh [base|wheels|cloud|edge|prove|report|all]   (default: all)
#
# No image registry is reachable here, so the base is made from the Debian archive:
# `debootstrap --variant=minbase` (cached as build/images/base-<suite>.tar) and `podman import`.
# The Python dependencies are downloaded once on this machine, with its own pip configuration
# (its local indexes), into build/images/wheels; the image builds install from there with
# `--no-index`, so RUN pip install needs no index (the edge build stage apt-installs cmake and
# g++ from the Debian archive debootstrap uses). The default ONNX models come from the model
# cache `make setup` filled (they are never exported inside an image: that needs torch).
# `podman run` cannot start a container on this machine (setrlimit refused); `buildah run
# --isolation chroot` can run a command in one, which is how the images are proven here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=../deploy/images.env
source deploy/images.env
OUT=build/images
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=localhost/cobot-hybrid-base:$SUITE
PY=${PY:-.venv/bin/python}
STORAGE=(--storage-driver vfs)
ISOLATION=(--isolation chroot)
REPORT=$OUT/report.txt

log() { printf 'build_images: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
bah() { buildah "${STORAGE[@]}" "$@"; }
pod() { podman "${STORAGE[@]}" "$@"; }

preflight() {
  [ "$(id -u)" -eq 0 ] || die 'run as root: buildah with vfs storage and chroot isolation needs it'
  local tool
  for tool in buildah podman debootstrap; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] \
      || die "$tool is missing: tools/install_system_deps.sh --images installs it"
  done
  [ -x "$PY" ] || die "$PY is missing: run make setup first (it also exports the models)"
  mkdir -p "$OUT"
}

# The Debian base: minbase plus Python, made once and cached as a tarball, imported once.
base() {
  if pod image exists "$BASE_IMAGE"; then
    log "base $BASE_IMAGE already imported"
    return
  fi
  local tarball=$OUT/base-$SUITE.tar rootfs=$OUT/rootfs-$SUITE
  local start=$SECONDS
  if [ ! -s "$tarball" ]; then
    log "debootstrap $SUITE from $MIRROR (minutes)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$rootfs" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
      || die "debootstrap failed: see $OUT/debootstrap.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* 2>/dev/null || true
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  pod import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
  echo "$((SECONDS - start))" >"$OUT/base.seconds"
  log "imported $BASE_IMAGE in $((SECONDS - start)) s"
}

# Every wheel of requirements/base.txt at the pinned versions, and the default models.
wheels() {
  [ "$("$PY" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" = True ] \
    || die "$PY is not Python 3.11 (Debian $SUITE's python3, which the images run)"
  local stamp=$OUT/wheels/.requirements
  local want
  want=$(cat requirements/base.txt requirements/offload.txt requirements/constraints.txt \
    | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log 'downloading the wheels of requirements/base.txt (pinned by requirements/constraints.txt)'
    rm -rf "$OUT/wheels" && mkdir -p "$OUT/wheels"   # no versions left from older pins
    # `pip wheel`: the few sdist-only packages (empy, ...) are built into wheels here, so the
    # image needs no build tools for them.
    "$PY" -m pip wheel -q --disable-pip-version-check -w "$OUT/wheels" \
      -r requirements/base.txt -r requirements/offload.txt -c requirements/constraints.txt \
      2> >(grep -v "is ignored" >&2)
    echo "$want" >"$stamp"
  fi
  local cache
  cache=$("$PY" -c 'from cobot_hybrid_perception.models import model_cache_dir as d; print(d())')
  mkdir -p "$OUT/models"
  local size
  for size in 640 320 1280; do   # 1280: the cloud's snapshot job
    [ -s "$cache/yolo11n-pose-$size.onnx" ] \
      || die "$cache/yolo11n-pose-$size.onnx is missing: run make setup (it exports the models)"
    cp -p "$cache/yolo11n-pose-$size.onnx" "$OUT/models/"
  done
}

build_one() {   # NAME TAG CONTAINERFILE
  local name=$1 tag=$2 file=$3 start end old
  old=$(pod image inspect --format '{{.Id}}' "localhost/$name:$tag" 2>/dev/null || true)
  log "building $name:$tag from $file (slow: vfs copies every layer)"
  start=$(date +%s)
  bah bud "${ISOLATION[@]}" --format docker --layers=false --pull=never \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION" \
    -f "$file" -t "localhost/$name:$tag" . >"$OUT/build-$name.log" 2>&1 \
    || { tail -n 40 "$OUT/build-$name.log" >&2; die "building $name failed: see the log above"; }
  end=$(date +%s)
  echo "$((end - start))" >"$OUT/build-$name.seconds"
  # The image this one replaces: vfs keeps a full copy of every image, so drop it.
  local new
  new=$(pod image inspect --format '{{.Id}}' "localhost/$name:$tag")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    pod rmi "$old" >/dev/null 2>&1 || true
  fi
  log "built $name:$tag in $((end - start)) s"
}

cloud() { build_one "$CLOUD_IMAGE" "$VERSION" deploy/images/Containerfile.cloud; }
edge() { build_one "$EDGE_IMAGE" "$VERSION" deploy/images/Containerfile.edge; }

# Run COMMAND... in a fresh working container of IMAGE, as the image's user, then remove it.
# It fails if the command wrote anywhere but /tmp and the state volume: what a read-only root
# filesystem would refuse.
in_image() {
  local image=$1 ctr mnt before after status=0 wrote
  shift
  ctr=$(bah from --pull-never "$image")
  mnt=$(bah mount "$ctr")
  before=$(mktemp) after=$(mktemp)
  snapshot "$mnt" >"$before"
  bah run "${ISOLATION[@]}" "$ctr" -- "$@" || status=$?
  snapshot "$mnt" >"$after"
  # buildah run itself bind-mounts these (empty mount points): not the command's writes.
  wrote=$(comm -13 "$before" "$after" | cut -d' ' -f1 \
    | grep -v -x -E '/etc|/etc/(hosts|hostname|resolv\.conf)' || true)
  rm -f "$before" "$after"
  bah umount "$ctr" >/dev/null
  bah rm "$ctr" >/dev/null
  if [ -n "$wrote" ]; then
    log "$* wrote outside /tmp and /var/lib/cobot_hybrid (a read-only root would refuse):"
    printf '  %s\n' $wrote >&2
    [ "$status" -ne 0 ] || status=1
  fi
  return "$status"
}

# Every path of a root filesystem with its mtime and size, but the writable places.
snapshot() {
  local mnt=$1
  (cd "$mnt" && find . -xdev \( -path ./tmp -o -path ./dev -o -path ./proc -o -path ./sys \
      -o -path ./run -o -path ./var/lib/cobot_hybrid \) -prune -o -printf '/%P %T@ %s\n') \
    | sort
}

# The image's HEALTHCHECK command, run in it: after SETUP (shell) and before TEARDOWN, when
# given; the status is the health check's.
healthcheck() {   # IMAGE [SETUP [TEARDOWN]]
  local image=$1 setup=${2:-:} teardown=${3:-:} json
  json=$(pod image inspect --format '{{json .Config.Healthcheck.Test}}' "$image")
  local -a check
  mapfile -d '' -t check < <(python3 -c '
import json, sys
test = json.loads(sys.argv[1]) or []
if test[:1] == ["CMD"]:
    sys.stdout.write("\0".join(test[1:]))
elif test[:1] == ["CMD-SHELL"]:
    sys.stdout.write("\0".join(["/bin/sh", "-c", test[1]]))' "$json")
  [ ${#check[@]} -gt 0 ] || die "$image has no HEALTHCHECK ($json)"
  log "HEALTHCHECK of $image: ${check[*]:0:2} ..."
  in_image "$image" bash -c "$setup
\"\$@\"; rc=\$?; echo \"HEALTHCHECK status \$rc\"
$teardown
exit \$rc" bash "${check[@]}"
}

prove() {
  local cloud_ref=localhost/$CLOUD_IMAGE:$VERSION edge_ref=localhost/$EDGE_IMAGE:$VERSION
  local start=$SECONDS
  log "proving $cloud_ref"
  in_image "$cloud_ref" id
  in_image "$cloud_ref" cobot-hybrid --help
  in_image "$cloud_ref" cobot-hybrid plan --site /opt/cobot_hybrid/examples/site.yaml \
    /opt/cobot_hybrid/examples/orders.yaml
  in_image "$cloud_ref" cobot-hybrid serve --help >/dev/null
  # the offload jobs: the snapshot job on a real photo (its models baked in, read-only root)
  in_image "$cloud_ref" python -c 'import json, sys, time, cv2, numpy as np
from cobot_hybrid_perception.snapshot_analysis import make_job
from cobot_hybrid_protocol.envelope import build_envelope
from cobot_hybrid_protocol.offload import Upload
from cobot_hybrid_protocol.snapshot import SNAPSHOT_TYPE, build_snapshot
image = np.full((480, 640, 3), 90, np.uint8)
jpeg = cv2.imencode(".jpg", image)[1].tobytes()
now = time.time()
data = {"image": {"width": 640, "height": 480, "frame_id": "", "stamp": now, "bytes": len(jpeg)},
        "trigger": {"topic": "protective_stop", "field": "data", "value": True, "stamp": now}}
result = make_job({})(Upload("cobot-1", 1, "events/stop_snapshot",
                             build_snapshot(build_envelope("cobot-1", 1, now, "image", SNAPSHOT_TYPE, data), jpeg), now))
assert result["passes"] == 4 and len(result["embedding"]) == 256, result
print("snapshot job in the image:", result["verdict"], result["passes"], "passes")'
  in_image "$cloud_ref" cobot-hybrid worker run --help >/dev/null
  in_image "$cloud_ref" cobot-hybrid history report --help >/dev/null
  healthcheck "$cloud_ref"
  log "proving $edge_ref"
  in_image "$edge_ref" id
  in_image "$edge_ref" python -c 'import rclpy, vision_msgs.msg, tf2_msgs.msg, onnxruntime
print("rclpy, vision_msgs", vision_msgs.msg.Detection2DArray.__name__, "onnxruntime",
      onnxruntime.__version__, onnxruntime.get_available_providers())'
  in_image "$edge_ref" sh -c 'python -c "import skimage.data, skimage.io
skimage.io.imsave(\"/tmp/astronaut.png\", skimage.data.astronaut())" \
    && cobot-hybrid detect --imgsz 320 --backend ort-cpu /tmp/astronaut.png'
  # The whole edge stack inside the image, in a network namespace holding only loopback
  # (tools/run_isolated.sh: DDS must never leave this machine), until every node is active,
  # then the HEALTHCHECK against the stack while it runs.
  log 'the edge stack inside the image: up, healthy, stopped (up to 240 s)'
  local stack_log=$OUT/edge-stack.log status=0
  tools/run_isolated.sh timeout -s INT 240 \
    "$ROOT/tools/build_images.sh" _stack_in_image "$edge_ref" >"$stack_log" 2>&1 || status=$?
  grep -E 'cobot-hybrid-edge:|HEALTHCHECK|all [0-9]+ nodes active' "$stack_log" \
    | cut -c1-160 >&2 || true
  [ "$status" -eq 0 ] || { tail -n 30 "$stack_log" >&2; die "the edge stack did not come up"; }
  echo "$((SECONDS - start))" >"$OUT/prove.seconds"
  log "both images proven in $((SECONDS - start)) s"
}

# Inside tools/run_isolated.sh: start the stack, wait until it is active, run the health
# check next to it, stop it with SIGINT: the stack must stop with status 0.
stack_in_image() {
  healthcheck "$1" 'cobot-hybrid-edge >/tmp/stack.log 2>&1 & stack=$!
for i in $(seq 180); do
  [ -e /tmp/cobot_hybrid/active ] && break
  kill -0 $stack 2>/dev/null || break
  sleep 1
done
cat /tmp/stack.log' 'kill -TERM $stack; wait $stack; stopped=$?; tail -n 3 /tmp/stack.log
[ $stopped -eq 0 ] || { echo "cobot-hybrid-edge: stopped with status $stopped"; exit 1; }'
}

report() {
  local name seconds size
  {
    echo "images of $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores ($(uname -m)):"
    for name in "$CLOUD_IMAGE" "$EDGE_IMAGE"; do
      seconds=$(cat "$OUT/build-$name.seconds" 2>/dev/null || echo '?')
      size=$(pod images --format '{{.Size}}' "localhost/$name:$VERSION" | head -n1)
      echo "  $name:$VERSION  build ${seconds} s  size ${size}"
    done
    echo "  base (debootstrap + import, when made):" \
      "$(cat "$OUT/base.seconds" 2>/dev/null || echo '?') s;" \
      "proof runs: $(cat "$OUT/prove.seconds" 2>/dev/null || echo '?') s"
  } | tee "$REPORT"
  pod images --format 'table {{.Repository}} {{.Tag}} {{.Size}}' \
    | grep -E 'cobot-hybrid|REPOSITORY'
}

main() {
  local step=${1:-all}
  preflight
  case "$step" in
    base) base ;;
    wheels) wheels ;;
    cloud) base; wheels; cloud ;;
    edge) base; wheels; edge ;;
    prove) prove ;;
    report) report ;;
    _stack_in_image) stack_in_image "$2" ;;
    all) base; wheels; cloud; edge; prove; report ;;
    *) die "unknown step $step (base|wheels|cloud|edge|prove|report|all)" ;;
  esac
}

main "$@"
