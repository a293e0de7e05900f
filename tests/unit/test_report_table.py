"""The comparison table: one column per benchmark variant, seeds averaged into one cell."""

from __future__ import annotations

from tasks.report import comparison_table, task_column


def _result(bench_label: str, name: str, acc: float) -> dict:
    return {"component": {"label": "baseline", "version": "1.0.0"}, "benchmark": {"name": name, "label": bench_label},
            "metrics": {"accuracy": acc, "n_examples": 100}, "higher_is_better": {"accuracy": True}}


def test_task_column_drops_only_the_seed():
    assert task_column({"name": "kv", "label": "kv(seed=1)"}) == "kv"
    assert task_column({"name": "kv", "label": "kv(n_pairs=16, seed=2)"}) == "kv(n_pairs=16)"
    assert task_column({"name": "kv", "label": "kv(seed=2, vocab=letters)"}) == "kv(vocab=letters)"
    assert task_column({"name": "kv"}) == "kv"


def test_variants_get_their_own_columns_and_seeds_are_averaged():
    results = [_result("kv(seed=1)", "kv", 1.0), _result("kv", "kv", 0.5),
               _result("kv(n_pairs=45)", "kv", 0.8), _result("pk", "pk", 0.9)]
    table = comparison_table.fn(results)
    assert table["columns"] == ["kv/accuracy", "kv(n_pairs=45)/accuracy", "pk/accuracy"]
    assert table["cells"]["baseline"]["kv/accuracy"]["mean"] == 0.75
    assert table["cells"]["baseline"]["kv(n_pairs=45)/accuracy"]["mean"] == 0.8
    # a single variant keeps the plain benchmark name (the quickstart's columns)
    single = comparison_table.fn([_result("kv(n_pairs=8, seed=1)", "kv", 1.0), _result("kv(n_pairs=8)", "kv", 0.0)])
    assert single["columns"] == ["kv/accuracy"] and single["cells"]["baseline"]["kv/accuracy"]["mean"] == 0.5
