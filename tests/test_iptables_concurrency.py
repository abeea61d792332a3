"""Redirects and cleanups that run at the same time must not interleave (they take a lock).

A restart racing a stop, or two restarts, used to leave a partial rule set behind while both reported
success. Each round starts two scripts at once in one namespace and checks the rules they leave.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.test_iptables import BACKENDS, CLEANUP, REDIRECT, Netns, consul_lines, fresh_netns, require_netns

ROUNDS = 15


@pytest.fixture(params=BACKENDS)
def ns(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Netns]:
    require_netns(request.param)
    with fresh_netns(tmp_path, request.param) as made:
        yield made


def run_together(ns: Netns, *commands: Sequence[str | Path]) -> list[subprocess.CompletedProcess[str]]:
    env = ns.env({"REDIRECT_ATTEMPTS": "3"})
    procs = [
        subprocess.Popen(ns.argv(*cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    results = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(list(map(str, cmd)), proc.returncode, out, err))
    return results


def test_two_redirects_at_once_leave_one_complete_rule_set(ns: Netns) -> None:
    ns.add_docker_rules()
    ns.run(REDIRECT, "web")
    complete = ns.nat()
    assert sorted(complete) == sorted(set(complete))
    for _ in range(ROUNDS):
        results = run_together(ns, [REDIRECT, "web"], [REDIRECT, "web"])
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
        assert ns.nat() == complete  # no duplicate, no missing rule, nothing half-made


def test_a_redirect_and_a_cleanup_at_once_leave_all_or_nothing(ns: Netns) -> None:
    ns.add_docker_rules()
    bare = ns.nat()
    ns.run(REDIRECT, "web")
    complete = ns.nat()
    for _ in range(ROUNDS):
        results = run_together(ns, [REDIRECT, "web"], [CLEANUP])
        assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
        after = ns.nat()
        assert after in (complete, bare), consul_lines(after)
    ns.run(CLEANUP)
    assert ns.nat() == bare


def test_a_held_lock_makes_the_cleanup_wait_for_its_turn(ns: Netns) -> None:
    ns.run(REDIRECT, "web")
    holder = subprocess.Popen(
        ["flock", str(ns.lock), "sh", "-c", "echo held; sleep 0.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        cleanup = subprocess.Popen(ns.argv(CLEANUP), env=ns.env(), stderr=subprocess.PIPE, text=True)
        _, err = cleanup.communicate(timeout=30)
        assert holder.poll() is not None  # it finished only after the holder let go
    finally:
        holder.wait(timeout=30)
    assert cleanup.returncode == 0, err
    assert "waiting for another redirect or cleanup to finish" in err
    assert not consul_lines(ns.nat())
