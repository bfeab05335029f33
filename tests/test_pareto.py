from leebert_plugin.exits.pareto import best_at, front


def pt(s, m, test_m=None):
    return {"dev_speedup": s, "dev_metric": m, "test_metric": m - 1 if test_m is None else test_m,
            "test_speedup": s * 1.1}


def test_front_drops_dominated_points_and_orders_by_speedup():
    pts = [pt(1.0, 90), pt(1.5, 89), pt(1.4, 85), pt(2.0, 89.5), pt(3.0, 70), pt(2.5, 60)]
    assert [(p["dev_speedup"], p["dev_metric"]) for p in front(pts)] == [(1.0, 90), (2.0, 89.5), (3.0, 70)]


def test_best_at_picks_a_real_point_most_accurate_at_the_target_or_faster():
    pts = [pt(1.0, 90), pt(1.5, 89), pt(2.0, 85), pt(2.6, 85), pt(3.0, 70)]
    assert best_at(pts, 1.5, "dev_speedup", "dev_metric") == 1  # 89 at 1.5x, not an interpolation
    assert best_at(pts, 1.6, "dev_speedup", "dev_metric") == 3  # 85 twice: the faster
    assert best_at(pts, 3.0 + 1e-12, "dev_speedup", "dev_metric") == 4  # within the tolerance
    assert best_at(pts, 3.5, "dev_speedup", "dev_metric") is None  # nothing that fast
