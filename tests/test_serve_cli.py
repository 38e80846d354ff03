"""``mlrig serve``'s choice of replica bounds from the active deployments."""

from __future__ import annotations

from types import SimpleNamespace

from mlrig.cli.serve import _deployment_bounds


def platform_with(*bounds: tuple[int, int]) -> SimpleNamespace:
    views = [{"replicas": {"min": low, "max": high}} for low, high in bounds]
    return SimpleNamespace(deployments=SimpleNamespace(snapshot=lambda: views))


def test_the_widest_asks_of_the_deployments_bound_the_replicas():
    assert _deployment_bounds(platform_with((1, 4), (2, 3))) == (2, 4)


def test_single_replica_deployments_or_none_leave_the_default():
    assert _deployment_bounds(platform_with((1, 1), (1, 1))) is None
    assert _deployment_bounds(platform_with()) is None


def test_an_unreadable_control_plane_leaves_the_default():
    def broken() -> list:
        raise RuntimeError("database down")

    assert _deployment_bounds(SimpleNamespace(deployments=SimpleNamespace(snapshot=broken))) is None
