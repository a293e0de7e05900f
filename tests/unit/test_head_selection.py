"""Head-search selection rules on synthetic scores (no models): the rules each patch declares in its file
(``head_search``), applied by the method-agnostic tasks."""

from __future__ import annotations

from tasks.head_search import SearchPlan, pick_refined, refine_grid, select_heads


def plan(method, objective="accuracy", grid=None):
    cands = {f"{method}(heads={lay}:{h})": [lay, h] for lay in range(2) for h in range(2)}
    return SearchPlan("m", f"{method}@1.0.0", objective, "icl_classification@1.0.0", "baseline@1.0.0", cands, {},
                      2, 2, grid)


def scores(p, values):
    return [{"component": c, "value": v} for c, v in zip(p.candidates, values)]


def test_act_keeps_heads_that_beat_the_baseline():
    p = plan("act")
    sel = select_heads.fn(p, {"value": 0.5}, scores(p, [0.6, 0.5, 0.4, 0.7]))
    assert sel["heads"] == [[0, 0], [1, 1]] and sel["baseline"] == 0.5 and sel["method"] == "act"
    assert select_heads.fn(p, {"value": 0.5}, scores(p, [0.6, 0.5, 0.4, 0.7]), top_k=1)["heads"] == [[1, 1]]
    assert select_heads.fn(p, {"value": 0.5}, scores(p, [0.6, 0.5, 0.4, 0.7]), min_gain=0.15)["heads"] == [[1, 1]]
    assert refine_grid.fn(p, sel) == {}  # act declares no grid


def test_entropy_objective_prefers_lower_entropy_and_head_mask_the_harmful_heads():
    p = plan("act", "entropy")
    assert select_heads.fn(p, {"value": 1.0}, scores(p, [0.9, 1.1, 1.0, 0.5]))["heads"] == [[0, 0], [1, 1]]
    m = plan("head_mask")
    assert select_heads.fn(m, {"value": 0.8}, scores(m, [0.2, 0.8, 0.9, 0.5]), top_k=1)["heads"] == [[0, 0]]


def test_zerotuning_dominant_group_and_gamma():
    p = plan("zerotuning", grid={"gamma": [2.0, 4.0]})
    sel = select_heads.fn(p, {"value": 0.5}, scores(p, [0.4, 0.45, 0.6, 0.3]))  # 3 down-effective, 1 up
    assert sel["group"] == "down" and sel["heads"] == [[0, 0], [0, 1], [1, 1]]
    grid = refine_grid.fn(p, sel)
    assert sorted(g["gamma"] for g in grid.values()) == [0.25, 0.5]  # reciprocals for a down-effective group
    spec = [s.text for s, g in grid.items() if g["gamma"] == 0.25][0]
    assert spec.startswith("zerotuning@1.0.0(") and "heads=0:0;0:1;1:1" in spec
    results = [{"component": s.text, "value": 0.7 if g["gamma"] == 0.25 else 0.55} for s, g in grid.items()]
    out = pick_refined.fn(p, sel, grid, results)
    assert out["refined"] == {"gamma": 0.25} and len(out["refine_grid"]) == 2
    none = pick_refined.fn(p, sel, grid, [{"component": s.text, "value": 0.4} for s in grid])
    assert none["refined"] is None  # no gamma beats the unpatched model


def test_up_effective_group_keeps_the_grid_values():
    p = plan("zerotuning", "entropy", grid={"gamma": [1.5, 3.0]})
    sel = select_heads.fn(p, {"value": 2.0}, scores(p, [1.5, 1.9, 2.5, 1.0]))  # entropy: lower is better
    assert sel["group"] == "up" and sel["heads"] == [[0, 0], [0, 1], [1, 1]]
    assert sorted(g["gamma"] for g in refine_grid.fn(p, sel).values()) == [1.5, 3.0]
