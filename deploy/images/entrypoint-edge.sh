#!/usr/bin/env bash
# cobot-hybrid-edge: the entry point of the edge images (installed as
# /usr/local/bin/cobot-hybrid-edge).
#
#   cobot-hybrid-edge                 the edge stack of one robot in this container, started the
#                                     way edge.launch.py resolves it (lifecycle: manager); the
#                                     container ends when any node ends, with its status
#   cobot-hybrid-edge --until-active  the same, but stop once every lifecycle node is active
#                                     (a smoke test: status 0 if the stack came up)
#   cobot-hybrid-edge health          the health check: every node started is alive and the
#                                     lifecycle manager has brought them all up
#   cobot-hybrid-edge NODE [ARGS...]  one node per container instead (e.g. detector_node
#                                     --ros-args --params-file ...), or any command
#
# The stack reads (like the launch arguments of edge.launch.py):
#   ROBOT_ID (cobot-1)  ROS_NAMESPACE_EDGE ('')  LOG_LEVEL (info)
#   PARAMS_FILE: overrides keyed /**/<node_name> (default /etc/cobot_hybrid/edge.yaml if
#     mounted, else the shipped edge_overrides.yaml)
#   DRIVER (none | speed_scaling_factor | ur_speed_slider | stop_trigger | stop_setbool)
#   IMAGE_SOURCE, EXECUTOR, CAMERA_TF (true | false, default false)
#   REMAPS: space-separated FROM:=TO topic remaps for every node (image:=/camera/image_raw)
# ROS_SETUP: a setup.bash to source first (the Jetson image's /opt/ros/humble).
# State goes to COBOT_HYBRID_DATA_DIR (/var/lib/cobot_hybrid, the volume); models are read
# from COBOT_HYBRID_MODEL_DIR, seeded from the ones baked into /opt/cobot_hybrid/models when
# it is elsewhere and empty (TensorRT writes its engines beside the model).
set -euo pipefail

CONFIG=${COBOT_HYBRID_SHARE:-/opt/cobot_hybrid/venv/share/cobot_hybrid}/config
RUN_DIR=${COBOT_HYBRID_RUN_DIR:-/tmp/cobot_hybrid}
BAKED_MODELS=/opt/cobot_hybrid/models
PIDS=$RUN_DIR/edge.pids
ACTIVE=$RUN_DIR/active

say() { printf 'cobot-hybrid-edge: %s\n' "$*" >&2; }

# A ROS distribution from apt (the Jetson image): its environment, then this package's prefix.
if [ -n "${ROS_SETUP:-}" ] && [ -f "$ROS_SETUP" ]; then
  set +u
  # shellcheck disable=SC1090
  source "$ROS_SETUP"
  set -u
  export AMENT_PREFIX_PATH=/opt/cobot_hybrid/venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
fi

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

health() {
  [ -s "$PIDS" ] || { say 'unhealthy: the stack has not started'; return 1; }
  local name pid
  while read -r name pid; do
    kill -0 "$pid" 2>/dev/null || { say "unhealthy: $name (pid $pid) is gone"; return 1; }
  done <"$PIDS"
  [ -e "$ACTIVE" ] || { say 'unhealthy: the lifecycle nodes are not all active yet'; return 1; }
  say "healthy: $(wc -l <"$PIDS") nodes running, all lifecycle nodes active"
}

seed_models() {
  local target=${COBOT_HYBRID_MODEL_DIR:-$BAKED_MODELS} model
  [ "$target" = "$BAKED_MODELS" ] && return 0
  mkdir -p "$target"
  for model in "$BAKED_MODELS"/*.onnx; do
    [ -e "$model" ] || continue
    [ -e "$target/${model##*/}" ] || cp "$model" "$target/"
  done
}

bool() {   # NAME VALUE: a launch-style boolean, refused otherwise
  case "$2" in true | false) ;; *) say "$1 must be true or false, not '$2'"; exit 2 ;; esac
}

stack() {
  local until_active=$1
  local robot_id=${ROBOT_ID:-cobot-1} namespace=${ROS_NAMESPACE_EDGE:-}
  local log_level=${LOG_LEVEL:-info} driver=${DRIVER:-none}
  local image_source=${IMAGE_SOURCE:-false} executor=${EXECUTOR:-false}
  local camera_tf=${CAMERA_TF:-false}
  local params=${PARAMS_FILE:-}
  if [ -z "$params" ]; then
    params=$CONFIG/edge_overrides.yaml
    [ -f /etc/cobot_hybrid/edge.yaml ] && params=/etc/cobot_hybrid/edge.yaml
  fi
  [ -f "$params" ] || { say "PARAMS_FILE $params does not exist"; exit 2; }
  bool IMAGE_SOURCE "$image_source"; bool EXECUTOR "$executor"; bool CAMERA_TF "$camera_tf"
  case "$driver" in
    none | speed_scaling_factor | ur_speed_slider | stop_trigger | stop_setbool) ;;
    *) say "DRIVER must be none, speed_scaling_factor, ur_speed_slider, stop_trigger or" \
           "stop_setbool, not '$driver'"; exit 2 ;;
  esac
  local data_dir=${COBOT_HYBRID_DATA_DIR:-/var/lib/cobot_hybrid}
  mkdir -p "$RUN_DIR" "$data_dir" "${ROS_LOG_DIR:-/tmp/ros_log}"
  rm -f "$PIDS" "$ACTIVE"
  seed_models

  local common=() remap
  [ -n "$namespace" ] && common+=(-r "__ns:=/${namespace#/}")
  for remap in ${REMAPS:-}; do common+=(-r "$remap"); done
  local managed="'safety_monitor_node'"
  [ "$driver" != none ] && managed+=", 'driver_adapter_node'"
  managed+=", 'detector_node'"

  start() {   # NAME SHIPPED_YAML [EXTRA ROS ARGS...]
    local name=$1 shipped=$2
    shift 2
    "$name" --ros-args --log-level "$log_level" -r "__node:=$name" "${common[@]}" \
      --params-file "$CONFIG/$shipped" --params-file "$params" "$@" &
    echo "$name $!" >>"$PIDS"
  }
  local manager_log=$RUN_DIR/lifecycle_manager_node.log
  [ "$image_source" = true ] && start image_source_node perception.yaml
  start safety_monitor_node safety.yaml -p autostart:=false -p "publish_camera_tf:=$camera_tf"
  [ "$driver" != none ] && start driver_adapter_node driver_adapter.yaml -p autostart:=false \
    -p "output:=\"$driver\""
  start detector_node perception.yaml -p autostart:=false
  start bridge_node bridge.yaml -p "robot_id:=\"$robot_id\"" -p "data_dir:=\"$data_dir\""
  # The executor sends each task to an ExecuteTask server: the reference one comes with it.
  [ "$executor" = true ] && start mission_executor_node bridge.yaml
  [ "$executor" = true ] && start skill_server_node bridge.yaml
  lifecycle_manager_node --ros-args --log-level "$log_level" \
    -r __node:=lifecycle_manager_node "${common[@]}" \
    --params-file "$CONFIG/lifecycle_manager.yaml" --params-file "$params" \
    -p "node_names:=[$managed]" > >(tee "$manager_log") 2>&1 &
  echo "lifecycle_manager_node $!" >>"$PIDS"
  say "started $(wc -l <"$PIDS") nodes for robot $robot_id${namespace:+ in /$namespace}"

  # SIGINT, as ros2 launch does: each node shuts down cleanly.
  local asked=0 failed=''
  stop_all() {
    local name pid
    while read -r name pid; do kill -INT "$pid" 2>/dev/null || true; done <"$PIDS"
  }
  trap 'asked=1; stop_all' TERM INT

  # Mark the stack active once the manager says so; end everything when any node ends.
  local status=1
  while :; do
    if [ ! -e "$ACTIVE" ] && grep -qE 'all [0-9]+ nodes active' "$manager_log" 2>/dev/null; then
      touch "$ACTIVE"
      say 'every lifecycle node is active'
      if [ "$until_active" = 1 ]; then
        asked=1
        stop_all
      fi
    fi
    local name pid gone=''
    while read -r name pid; do
      kill -0 "$pid" 2>/dev/null || { gone=$name; break; }
    done <"$PIDS"
    if [ -n "$gone" ]; then
      if [ "$asked" = 0 ]; then
        failed=$gone
        say "$gone ended: stopping the stack"
        stop_all
      fi
      break
    fi
    sleep 0.5 || true
  done
  # Collect every node's status: the failed node's is the container's.
  local rc
  while read -r name pid; do
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    [ "$name" = "$failed" ] && status=$rc
  done <"$PIDS"
  if [ -n "$failed" ]; then
    say "$failed ended with status $status"
    return "$(( status == 0 ? 1 : status ))"
  fi
  if [ "$until_active" = 1 ] && [ ! -e "$ACTIVE" ]; then
    say 'stopped before the stack came up'
    return 1
  fi
  say 'stopped'
  return 0
}

case "${1:-}" in
  '') stack 0 ;;
  --until-active) stack 1 ;;
  health) health ;;
  -h | --help) usage ;;
  *) exec "$@" ;;
esac
