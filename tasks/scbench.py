"""Thin tasks of the scbench flow: validate tasks and lengths, one cached point per (press, ratio, task), MLflow runs.

A point compresses each session's context once through the reusable prefill cache (tasks/prefill_cache.py: loaded
from disk when another point, mode or run computed it already) and answers every turn in each requested mode on
copies of it (components/scbench/protocol.py).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from components.scbench import protocol
from components.scbench.sessions import Format, Session
from registry.specs import ResolvedSpec, SpecError, resolved
from tasks import plots
from tasks.integrity import CHECKED
from tasks.models import LoadedModel
from tasks.prefill_cache import compressed_prefill, model_dtype
from tasks.retry import transient


@dataclass(frozen=True)
class SessionSet:
    """A validated SCBench task: its label, formats and sessions, and a digest of all of it (the cache key's)."""

    label: str
    spec: str
    format: Format
    sessions: tuple[Session, ...]
    digest: str


def protocol_code() -> str:
    """Fingerprint of the protocol's code: components/scbench/protocol.py and every project module it imports
    (sessions, scoring, the prefill snapshot), each by its syntax tree without comments and docstrings."""
    from registry import sources

    h = hashlib.sha256()
    for mod in sources.closure(["components.scbench.protocol"]):
        h.update(mod.encode())
        h.update(sources.normalized_source(mod).encode())
    return h.hexdigest()[:16]


@task(cache_policy=NO_CACHE, task_run_name="validate scbench tasks")
def plan_tasks(tasks: list[str], modes: list[str]) -> list[SessionSet]:
    """Build every task's sessions (a user file is read and checked row by row); raises naming a bad spec, mode, row
    or field before any model is loaded."""
    bad = [m for m in modes if m not in protocol.MODES]
    if bad or not modes:
        raise SpecError(f"modes {modes} must be a non-empty subset of {', '.join(protocol.MODES)}")
    code = protocol_code()
    out = []
    for text in tasks:
        t = protocol.task_from_spec(text)
        sessions = tuple(t.sessions())
        fmt = t.format()
        payload = json.dumps([code, asdict(fmt), [s.record() for s in sessions]], sort_keys=True)
        out.append(SessionSet(t.label(), text, fmt, sessions, hashlib.sha256(payload.encode()).hexdigest()[:24]))
    if not out:
        raise SpecError("no tasks given")
    return out


@task(cache_policy=NO_CACHE, task_run_name="check lengths")
def check_lengths(loaded: LoadedModel, sets: list[SessionSet], modes: list[str]) -> dict[str, int]:
    """Longest context + follow-up + answer per task, in tokens; raises before compute when one exceeds the model's
    context (``max_position_embeddings``)."""
    limit = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0)
    out = {}
    for s in sets:
        longest = 0
        for sess in s.sessions:
            n_ctx = protocol.context_ids(loaded.tokenizer, sess.context).shape[1]
            n_q = max(protocol.query_ids(loaded.tokenizer, protocol.follow_up(sess, s.format, i, m)).shape[1]
                      for i in range(len(sess.turns)) for m in modes)
            total = n_ctx + n_q + s.format.max_new_tokens
            if limit and total > limit:
                raise SpecError(f"{s.label}: session {sess.id!r} needs {total} tokens (context {n_ctx} + turn "
                                f"{n_q} + answer {s.format.max_new_tokens}), more than {loaded.name}'s context of "
                                f"{limit}")
            longest = max(longest, total)
        out[s.label] = longest
    return out


def _point_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    loaded: LoadedModel = parameters["loaded"]
    press = resolved(parameters["press"], "press")
    key = [loaded.fingerprint, model_dtype(loaded.model), press.fingerprint, press.code_fingerprint, protocol_code(),
           parameters["sessions"].digest, list(parameters["modes"])]
    return "scbench1-" + hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


@task(cache_key_fn=_point_key, result_serializer=CHECKED, retries=0, task_run_name="{press} on {sessions.label}")
def scbench_point(loaded: LoadedModel, press: ResolvedSpec | str, sessions: SessionSet,
                  modes: list[str]) -> dict[str, Any]:
    """Every session of ``sessions`` with ``press``: the compressed prefill once per context (disk cache), then each
    turn in each mode. Returns per-mode accuracy (overall and per turn), the records, measured cache bytes and
    seconds (prefill computed, prefill loaded, answering)."""
    p = resolved(press, "press")
    fmt = sessions.format
    device = next(loaded.model.parameters()).device
    records: list[dict[str, Any]] = []
    full = kept = kv_bytes = hits = 0
    prefill_s = load_s = 0.0
    answer_s = {m: 0.0 for m in modes}
    for sess in sessions.sessions:
        ids = protocol.context_ids(loaded.tokenizer, sess.context, device)
        pre = compressed_prefill(loaded, p, ids)
        hits += int(pre.info["hit"])
        prefill_s += float(pre.info["prefill_seconds"])
        load_s += float(pre.info["load_seconds"])
        full, kept, kv_bytes = full + pre.meta["full_bytes"], kept + pre.meta["kept_bytes"], kv_bytes + pre.kv_bytes
        for mode in modes:
            start = time.perf_counter()
            recs = protocol.run_session(loaded.model, loaded.tokenizer, p.component, pre, sess, fmt, mode)
            answer_s[mode] += time.perf_counter() - start
            for r in recs:
                r["context_tokens"] = int(ids.shape[1])
            records += recs
    per_mode = {}
    for mode in modes:
        rs = [r for r in records if r["mode"] == mode]
        turns = sorted({r["turn"] for r in rs})
        per_mode[mode] = {
            "accuracy": sum(r["correct"] for r in rs) / len(rs),
            "by_turn": {str(t): sum(r["correct"] for r in rs if r["turn"] == t) / sum(r["turn"] == t for r in rs)
                        for t in turns},
            "answer_seconds": answer_s[mode], "n_queries": len(rs)}
    ratio = kept / full if full else 1.0
    print(f"{p.label} on {sessions.label}: " + ", ".join(f"{m} {v['accuracy']:.3f}" for m, v in per_mode.items())
          + f"; cache bytes kept {ratio:.3f}; prefill {prefill_s:.1f}s computed, {hits}/{len(sessions.sessions)} "
          f"loaded from the prefill cache ({load_s:.2f}s)")
    return {"press": p.component.component_name, "press_spec": p.text, "press_label": p.label,
            "ratio": float(p.component.ratio), "task": sessions.label, "task_spec": sessions.spec,
            "data_digest": sessions.digest, "model": loaded.name, "model_fingerprint": loaded.fingerprint,
            "modes": per_mode, "records": records, "cache_full_bytes": full, "cache_kept_bytes": kept,
            "cache_kv_bytes": kv_bytes, "cache_bytes_ratio": ratio, "prefill_seconds": prefill_s,
            "load_seconds": load_s, "prefill_hits": hits, "n_sessions": len(sessions.sessions)}


def table_markdown(points: list[dict[str, Any]]) -> str:
    """Per task: one row per (press, ratio) with each mode's accuracy, overall and per turn, and the bytes kept."""
    out = []
    modes = list(dict.fromkeys(m for pt in points for m in pt["modes"]))
    for t in dict.fromkeys(pt["task"] for pt in points):
        sub = [pt for pt in points if pt["task"] == t]
        out += [f"### {t}", "", "| press | ratio | cache bytes kept | " + " | ".join(
            f"{m} | {m} per turn" for m in modes) + " |", "|---|---|---|" + "---|---|" * len(modes)]
        for pt in sub:
            cells = [f"{pt['modes'][m]['accuracy']:.3f} | " + " ".join(
                f"{v:.2f}" for _, v in sorted(pt["modes"][m]["by_turn"].items(), key=lambda kv: int(kv[0])))
                if m in pt["modes"] else " | " for m in modes]
            out.append(f"| {pt['press']} | {pt['ratio']:g} | {pt['cache_bytes_ratio']:.3f} | " + " | ".join(cells)
                       + " |")
        out.append("")
    return "\n".join(out)


def turn_figure(points: list[dict[str, Any]], title: str) -> Any:
    """Accuracy per turn, one panel per mode, a line per press (points of one task and ratio)."""
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(m for pt in points for m in pt["modes"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.6 * len(modes), 3.4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for i, pt in enumerate(p for p in points if mode in p["modes"]):
            by = sorted((int(k), v) for k, v in pt["modes"][mode]["by_turn"].items())
            ax.plot([b[0] for b in by], [b[1] for b in by], marker="o", label=pt["press"], color=f"C{i % 10}")
        ax.set_title(mode.replace("_", "-"), fontsize=9)
        ax.set_xlabel("turn / query")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=transient, cache_policy=NO_CACHE,
      task_run_name="log scbench")
def log_scbench(experiment: str, parent: str, points: list[dict[str, Any]]) -> str:
    """One child run per (point, mode): metrics (accuracy, accuracy per turn as steps, cache bytes, seconds) and the
    records; on the parent, a figure per (task, ratio) and the table (Markdown and JSON)."""
    from mlflow.entities import Metric, Param

    from tasks.runs import ended
    from tasks.tracking import client, experiment_id

    c = client()
    exp = experiment_id(experiment)
    for pt in points:
        for mode, res in pt["modes"].items():
            tags = {"mlflow.parentRunId": parent, "attnflow.model": pt["model"], "attnflow.kind": "scbench",
                    "attnflow.model_fingerprint": pt["model_fingerprint"], "attnflow.press": pt["press_spec"],
                    "attnflow.task": pt["task"], "attnflow.scbench_mode": mode,
                    "attnflow.data_fingerprint": pt["data_digest"]}
            rid = c.create_run(exp, run_name=f"{pt['press_label']} | {pt['task']} | {mode}", tags=tags).info.run_id
            with ended(rid):
                metrics = [Metric("accuracy", res["accuracy"], 0, 0), Metric("kv/ratio", pt["ratio"], 0, 0),
                           Metric("kv/cache_bytes_ratio", pt["cache_bytes_ratio"], 0, 0),
                           Metric("kv/cache_kept_bytes", float(pt["cache_kept_bytes"]), 0, 0),
                           Metric("seconds/prefill", pt["prefill_seconds"], 0, 0),
                           Metric("seconds/prefill_cache_load", pt["load_seconds"], 0, 0),
                           Metric("seconds/answer", res["answer_seconds"], 0, 0),
                           Metric("seconds/answer_per_query", res["answer_seconds"] / res["n_queries"], 0, 0),
                           Metric("prefill_cache/hits", float(pt["prefill_hits"]), 0, 0)]
                metrics += [Metric("accuracy_by_turn", v, 0, int(t)) for t, v in res["by_turn"].items()]
                params = [Param("press", pt["press_spec"]), Param("ratio", str(pt["ratio"])),
                          Param("task", pt["task_spec"][:6000]), Param("mode", mode), Param("model", pt["model"])]
                c.log_batch(rid, metrics=metrics, params=params)
                c.log_dict(rid, [r for r in pt["records"] if r["mode"] == mode], "records.json")
    for t in dict.fromkeys(pt["task"] for pt in points):
        for ratio in sorted({pt["ratio"] for pt in points if pt["task"] == t}):
            sub = [pt for pt in points if pt["task"] == t and pt["ratio"] == ratio]
            fig = turn_figure(sub, f"{t} at ratio {ratio:g}: accuracy per turn")
            c.log_figure(parent, fig, f"turns/{plots.safe_name(t)}-ratio{ratio:g}.png")
            plots.close(fig)
    md = table_markdown(points)
    c.log_text(parent, md, "scbench.md")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scbench.json"
        path.write_text(json.dumps([{k: v for k, v in pt.items() if k != "records"} for pt in points], indent=1))
        c.log_artifact(parent, str(path))
    return md
