"""Assign tasks to robots and order them: greedy, local search, and CP-SAT. Pure Python.

A plan is, per robot, an ordered list of tasks. :func:`evaluate` turns orders into times with
the exact travel times of the site: a task starts when its robot is free and has travelled
there, its release time has come and its predecessors (on any robot) have ended. The cost is
``makespan + lateness_weight * sum(priority * lateness)``.

:func:`plan` runs, within ``time_limit_s``:

1. greedy list scheduling (earliest finish, deadlines and priority first) - also the fallback;
2. CP-SAT (OR-Tools) with one circuit per robot, exact sequence-dependent travel, optional
   task placement, precedence and soft deadlines, warm-started from the best plan so far;
   used when the model is small enough to solve in the time limit (``max_cpsat_arcs``);
3. local search (move a task to another place, swap two tasks) on the exact cost,

and returns the cheapest. Tasks in progress are not planned: they make their robot busy until
they end, and a ``previous`` plan's assignments are kept unless moving them saves more than
``stability_s`` per moved task, so a replan changes only what must change.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cobot_hybrid_planner.errors import PlannerError
from cobot_hybrid_planner.orders import PlanTask
from cobot_hybrid_planner.site import Site

__all__ = ['Assignment', 'FleetRobot', 'Plan', 'PlanningError', 'evaluate', 'greedy', 'plan']


class PlanningError(PlannerError):
    """No plan can be made (e.g. a precedence deadlock across robots)."""


@dataclass(frozen=True)
class FleetRobot:
    """A robot as the planner sees it now."""

    robot_id: str
    capabilities: frozenset[str]
    station: str                 # where it is, or where its task in progress ends
    available_s: float = 0.0     # when it is free (end of its task in progress)
    online: bool = True


@dataclass(frozen=True)
class Assignment:
    """A task placed on a robot with its times."""

    task_id: str
    robot_id: str
    start_s: float
    end_s: float
    travel_s: float


@dataclass
class Plan:
    """Orders per robot, their times, and what could not be planned."""

    orders: dict[str, list[str]]
    assignments: dict[str, Assignment] = field(default_factory=dict)
    unassigned: dict[str, str] = field(default_factory=dict)
    makespan_s: float = 0.0
    weighted_lateness_s: float = 0.0
    cost: float = 0.0
    method: str = 'greedy'
    notes: list[str] = field(default_factory=list)


def _capable(task: PlanTask, robot: FleetRobot) -> bool:
    return robot.online and task.capability in robot.capabilities


def evaluate(orders: Mapping[str, Sequence[str]], tasks: Mapping[str, PlanTask],
             robots: Mapping[str, FleetRobot], site: Site, lateness_weight: float = 1.0,
             done: frozenset[str] = frozenset()) -> Plan | None:
    """Exact times of the given orders; None when precedence deadlocks across robots."""
    position = {r: 0 for r in orders}
    free_at = {r: robots[r].available_s for r in orders}
    where = {r: robots[r].station for r in orders}
    ends: dict[str, float] = {}
    assignments: dict[str, Assignment] = {}
    remaining = sum(len(o) for o in orders.values())
    while remaining:
        progressed = False
        for robot_id, order in orders.items():
            while position[robot_id] < len(order):
                task = tasks[order[position[robot_id]]]
                preds = [p for p in task.after if p not in done]
                if any(p not in ends for p in preds):
                    break
                travel = site.travel_s(where[robot_id], task.station)
                start = max(free_at[robot_id] + travel, task.release_s,
                            max((ends[p] for p in preds), default=0.0))
                end = start + task.duration_s
                assignments[task.task_id] = Assignment(task.task_id, robot_id, start, end,
                                                       travel)
                ends[task.task_id] = end
                free_at[robot_id], where[robot_id] = end, task.station
                position[robot_id] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            return None
    makespan = max((a.end_s for a in assignments.values()), default=0.0)
    lateness = 0.0
    for task_id, item in assignments.items():
        due = tasks[task_id].deadline_s
        if due is not None:
            lateness += tasks[task_id].priority * max(0.0, item.end_s - due)
    return Plan({r: list(o) for r, o in orders.items()}, assignments, {}, makespan, lateness,
                makespan + lateness_weight * lateness)


def _topological(tasks: Mapping[str, PlanTask], done: frozenset[str]) -> list[str]:
    key = {t.task_id: (t.deadline_s if t.deadline_s is not None else math.inf, -t.priority,
                       t.release_s, t.task_id) for t in tasks.values()}
    placed: set[str] = set()
    out: list[str] = []
    pending = sorted(tasks, key=lambda t: key[t])
    while pending:
        for task_id in pending:
            if all(p in placed or p in done for p in tasks[task_id].after):
                out.append(task_id)
                placed.add(task_id)
                pending.remove(task_id)
                break
        else:
            raise PlanningError(f'precedence cycle among {pending}')
    return out


def greedy(tasks: Mapping[str, PlanTask], robots: Mapping[str, FleetRobot], site: Site,
           lateness_weight: float = 1.0, done: frozenset[str] = frozenset()) -> Plan:
    """Earliest-finish list scheduling in deadline / priority order."""
    online = {r: robot for r, robot in robots.items() if robot.online}
    orders: dict[str, list[str]] = {r: [] for r in online}
    free_at = {r: robot.available_s for r, robot in online.items()}
    where = {r: robot.station for r, robot in online.items()}
    ends: dict[str, float] = {}
    unassigned: dict[str, str] = {}
    for task_id in _topological(tasks, done):
        task = tasks[task_id]
        if any(p in unassigned for p in task.after):
            unassigned[task_id] = 'a predecessor could not be planned'
            continue
        ready = max([task.release_s] + [ends[p] for p in task.after if p in ends])
        best: tuple[float, str] | None = None
        for robot_id, robot in online.items():
            if not _capable(task, robot):
                continue
            finish = max(free_at[robot_id] + site.travel_s(where[robot_id], task.station),
                         ready) + task.duration_s
            if best is None or (finish, robot_id) < best:
                best = (finish, robot_id)
        if best is None:
            unassigned[task_id] = f'no online robot has capability {task.capability!r}'
            continue
        finish, robot_id = best
        orders[robot_id].append(task_id)
        ends[task_id], free_at[robot_id], where[robot_id] = finish, finish, task.station
    planned = {t: tasks[t] for t in tasks if t not in unassigned}
    result = evaluate(orders, planned, online, site, lateness_weight, done)
    if result is None:
        raise PlanningError('greedy plan deadlocked on precedence')
    result.unassigned = unassigned
    return result


def _local_search(best: Plan, tasks: Mapping[str, PlanTask],
                  robots: Mapping[str, FleetRobot], site: Site, lateness_weight: float,
                  done: frozenset[str], deadline: float, seed: int) -> Plan:
    rng = random.Random(seed)
    planned = {t: tasks[t] for o in best.orders.values() for t in o}
    online = {r: robots[r] for r in best.orders}
    robot_ids = list(best.orders)
    current = best
    tries = 0
    while time.monotonic() < deadline and planned:
        tries += 1
        orders = {r: list(o) for r, o in current.orders.items()}
        source = rng.choice([r for r in robot_ids if orders[r]] or robot_ids)
        if not orders[source]:
            break
        task_id = orders[source].pop(rng.randrange(len(orders[source])))
        if rng.random() < 0.5:  # relocate
            targets = [r for r in robot_ids if _capable(tasks[task_id], online[r])]
            target = rng.choice(targets)
            orders[target].insert(rng.randint(0, len(orders[target])), task_id)
        else:  # swap with a task on another capable robot
            others = [(r, i) for r in robot_ids for i, t in enumerate(orders[r])
                      if _capable(tasks[task_id], online[r])
                      and _capable(tasks[t], online[source])]
            if not others:
                continue
            r, i = rng.choice(others)
            orders[source].append(orders[r][i])
            orders[r][i] = task_id
        candidate = evaluate(orders, planned, online, site, lateness_weight, done)
        if candidate is not None and candidate.cost < current.cost - 1e-9:
            candidate.method = 'local search'
            current = candidate
    current.notes.append(f'local search: {tries} moves tried')
    return current


def _cpsat(best: Plan, tasks: Mapping[str, PlanTask], robots: Mapping[str, FleetRobot],
           site: Site, lateness_weight: float, done: frozenset[str], time_limit_s: float,
           max_arcs: int) -> Plan | None:
    try:
        from ortools.sat.python import cp_model
    except ImportError:
        best.notes.append('CP-SAT skipped: ortools is not installed')
        return None
    planned = [t for o in best.orders.values() for t in o]
    online = [r for r in best.orders]
    arcs_needed = sum((sum(1 for t in planned if _capable(tasks[t], robots[r])) + 1) ** 2
                      for r in online)
    if arcs_needed > max_arcs:
        best.notes.append(f'CP-SAT skipped: {arcs_needed} arcs > {max_arcs}')
        return None
    horizon = int(math.ceil(best.makespan_s * 2 + 1))
    model = cp_model.CpModel()
    start = {t: model.new_int_var(int(tasks[t].release_s), horizon, f's_{t}') for t in planned}
    dur = {t: int(math.ceil(tasks[t].duration_s)) for t in planned}
    on: dict[tuple[str, str], cp_model.IntVar] = {}
    for r in online:
        robot = robots[r]
        nodes = [t for t in planned if _capable(tasks[t], robot)]
        arcs: list[tuple[int, int, Any]] = []
        index = {t: i + 1 for i, t in enumerate(nodes)}
        empty = model.new_bool_var(f'empty_{r}')
        arcs.append((0, 0, empty))
        for t in nodes:
            lit = model.new_bool_var(f'on_{t}_{r}')
            on[t, r] = lit
            arcs.append((index[t], index[t], ~lit))
            first = model.new_bool_var(f'first_{r}_{t}')
            last = model.new_bool_var(f'last_{r}_{t}')
            arcs += [(0, index[t], first), (index[t], 0, last)]
            travel = int(math.ceil(site.travel_s(robot.station, tasks[t].station)))
            model.add(start[t] >= int(robot.available_s) + travel).only_enforce_if(first)
            for u in nodes:
                if u == t:
                    continue
                lit_tu = model.new_bool_var(f'arc_{r}_{t}_{u}')
                arcs.append((index[t], index[u], lit_tu))
                gap = int(math.ceil(site.travel_s(tasks[t].station, tasks[u].station)))
                model.add(start[u] >= start[t] + dur[t] + gap).only_enforce_if(lit_tu)
        model.add_circuit(arcs)
    for t in planned:
        model.add_exactly_one(on[t, r] for r in online if (t, r) in on)
        for p in tasks[t].after:
            if p in start:
                model.add(start[t] >= start[p] + dur[p])
    makespan = model.new_int_var(0, horizon, 'makespan')
    late_terms = []
    for t in planned:
        model.add(makespan >= start[t] + dur[t])
        deadline = tasks[t].deadline_s
        if deadline is not None:
            late = model.new_int_var(0, horizon, f'late_{t}')
            model.add(late >= start[t] + dur[t] - int(deadline))
            late_terms.append(tasks[t].priority * late)
    scale = 100
    model.minimize(scale * makespan + int(scale * lateness_weight) * sum(late_terms))
    for r, order in best.orders.items():  # warm start
        for t in order:
            model.add_hint(on[t, r], 1)
            model.add_hint(start[t], int(best.assignments[t].start_s))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(0.05, time_limit_s)
    solver.parameters.num_workers = 2
    status = solver.solve(model)
    if solver.status_name(status) not in ('OPTIMAL', 'FEASIBLE'):
        best.notes.append(f'CP-SAT found no plan ({solver.status_name(status)})')
        return None
    orders = {r: sorted((t for t in planned if (t, r) in on and solver.value(on[t, r])),
                        key=lambda t: solver.value(start[t])) for r in online}
    result = evaluate(orders, {t: tasks[t] for t in planned},
                      {r: robots[r] for r in online}, site, lateness_weight, done)
    if result is None:
        return None
    result.method = f'cp-sat ({solver.status_name(status).lower()})'
    return result


def _keep_previous(previous: Mapping[str, Sequence[str]], tasks: Mapping[str, PlanTask],
                   robots: Mapping[str, FleetRobot], site: Site, lateness_weight: float,
                   done: frozenset[str], fresh: Plan) -> Plan | None:
    """Return the previous orders minus what left, plus new tasks where the fresh plan has them."""
    online = {r for r, robot in robots.items() if robot.online}
    orders: dict[str, list[str]] = {r: [] for r in fresh.orders}
    placed: set[str] = set()
    for robot_id, order in previous.items():
        if robot_id not in online or robot_id not in orders:
            continue  # an offline robot's tasks must move
        for task_id in order:
            if task_id in fresh.assignments and _capable(tasks[task_id], robots[robot_id]):
                orders[robot_id].append(task_id)
                placed.add(task_id)
    for robot_id, order in fresh.orders.items():
        orders[robot_id] += [t for t in order if t not in placed]
    planned = {t: tasks[t] for t in fresh.assignments}
    return evaluate(orders, planned, {r: robots[r] for r in orders}, site, lateness_weight,
                    done)


def plan(tasks: Sequence[PlanTask], robots: Sequence[FleetRobot], site: Site,
         time_limit_s: float = 2.0, lateness_weight: float = 1.0,
         done: frozenset[str] = frozenset(), max_cpsat_arcs: int = 40_000,
         seed: int = 0, previous: Mapping[str, Sequence[str]] | None = None,
         stability_s: float = 5.0) -> Plan:
    """Return the cheapest plan found within the time limit (greedy is the fallback).

    With ``previous`` (robot -> task ids of the last plan), tasks keep their robot and order
    unless the new plan saves more than ``stability_s`` per task it moves.
    """
    deadline = time.monotonic() + time_limit_s
    task_map = {t.task_id: t for t in tasks}
    robot_map = {r.robot_id: r for r in robots}
    best = greedy(task_map, robot_map, site, lateness_weight, done)
    unassigned = dict(best.unassigned)
    notes = [f'greedy cost {best.cost:.1f}']
    solved = _cpsat(best, task_map, robot_map, site, lateness_weight, done,
                    0.6 * (deadline - time.monotonic()), max_cpsat_arcs)
    notes += best.notes
    if solved is not None:
        notes.append(f'{solved.method} cost {solved.cost:.1f}')
        if solved.cost < best.cost:
            best = solved
    best = _local_search(best, task_map, robot_map, site, lateness_weight, done, deadline,
                         seed)
    if previous:
        kept = _keep_previous(previous, task_map, robot_map, site, lateness_weight, done, best)
        if kept is not None:
            old_robot = {t: r for r, order in previous.items() for t in order}
            moved = sum(1 for t, a in best.assignments.items()
                        if t in old_robot and old_robot[t] != a.robot_id)
            if best.cost >= kept.cost - stability_s * moved:
                kept.method = 'previous plan kept'
                best = kept
            notes.append(f'previous plan cost {kept.cost:.1f}, new plan moves {moved} tasks')
    best.unassigned = unassigned
    best.notes = notes + best.notes
    return best
