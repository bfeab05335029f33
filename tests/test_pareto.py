import math

from leebert_plugin.exits.pareto import at_speedup, front


def pt(s, m, test_m=None):
    return {"dev_speedup": s, "dev_metric": m, "test_metric": m - 1 if test_m is None else test_m,
            "test_speedup": s * 1.1}


def test_front_drops_dominated_points_and_orders_by_speedup():
    pts = [pt(1.0, 90), pt(1.5, 89), pt(1.4, 85), pt(2.0, 89.5), pt(3.0, 70), pt(2.5, 60)]
    assert [(p["dev_speedup"], p["dev_metric"]) for p in front(pts)] == [(1.0, 90), (2.0, 89.5), (3.0, 70)]


def test_interpolation_uses_dev_weights_for_test_and_never_extrapolates():
    pts = [pt(1.0, 90, test_m=88), pt(2.0, 80, test_m=70), pt(3.0, 60, test_m=50)]
    mid = at_speedup(pts, 1.5)
    assert mid["dev_metric"] == 85 and mid["test_metric"] == 79 and math.isclose(mid["test_speedup"], 1.65)
    assert at_speedup(pts, 3.0)["test_metric"] == 50
    assert math.isnan(at_speedup(pts, 3.5)["test_metric"])  # the front does not reach 3.5x


def test_below_the_front_the_slowest_front_point_serves():
    pts = [pt(1.0, 80, test_m=79), pt(2.0, 85, test_m=84)]  # the faster point is also better
    assert at_speedup(pts, 1.5) == {"test_metric": 84, "test_speedup": 2.2, "dev_metric": 85}
