"""SCBench sessions: SCBench's JSONL layout read and checked row by row, the built-in tasks, the two modes' prompts
and the scoring rules. No model."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.base import ParamError
from components.scbench import protocol
from components.scbench.layout import SessionDataError, read_layout

ROWS = [{"id": "a", "context": "The sky is blue. The grass is green.",
         "multi_turns": [{"input": "Sky colour?", "answer": "blue"},
                         {"input": "Grass colour?", "answer": ["green", "verde"]}]},
        {"context": "Two plus two is four.", "multi_turns": [{"input": "2+2?", "answer": 4}]}]


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_layout_is_read_with_optional_ids_and_list_answers(tmp_path):
    sessions = read_layout(_jsonl(tmp_path, ROWS))
    assert [s.id for s in sessions] == ["a", "row1"]
    assert sessions[0].turns[1].answers == ("green", "verde") and sessions[1].turns[0].answers == ("4",)
    assert sessions[0].record()["multi_turns"][1]["answer"] == ["green", "verde"]
    parquet = tmp_path / "d.parquet"  # nested lists as Parquet writers store them, or as JSON text
    pq.write_table(pa.Table.from_pylist([{**ROWS[0], "multi_turns": json.dumps(ROWS[0]["multi_turns"])}]), parquet)
    assert read_layout(str(parquet))[0].turns == sessions[0].turns
    task = protocol.task_from_spec(str(tmp_path / "d.jsonl"))
    assert task.format().metric == "substring" and len(task.sessions()) == 2


@pytest.mark.parametrize("row, message", [
    ('{"context": "x", "multi_turns": [', r"row 1 \(line 2\): not valid JSON"),
    ({"multi_turns": [{"input": "q", "answer": "a"}]}, r"row 1 \(line 2\): field 'context' .* \(missing\)"),
    ({"context": "x", "multi_turns": []}, r"row 1 \(line 2\): field 'multi_turns' must be a non-empty list"),
    ({"context": "x", "multi_turns": [{"input": "q", "answer": "a"}, {"input": "q2"}]},
     r"row 1 \(line 2\), multi_turns\[1\]: field 'answer' .* \(missing\)"),
    ({"context": "x", "multi_turns": [{"input": "", "answer": "a"}]}, r"multi_turns\[0\]: field 'input'"),
    ({"context": "x", "multi_turns": [{"input": "q", "answer": True}]}, r"multi_turns\[0\]: field 'answer'"),
    ({"id": "a", "context": "x", "multi_turns": [{"input": "q", "answer": "a"}]}, r"field 'id' = 'a' repeats"),
])
def test_a_bad_row_names_the_row_and_the_field(tmp_path, row, message):
    with pytest.raises(SessionDataError, match=message):
        read_layout(_jsonl(tmp_path, [ROWS[0], row]))


def test_task_specs_are_checked():
    with pytest.raises(ParamError, match="unknown SCBench task"):
        protocol.task_from_spec("nope(x=1)")
    with pytest.raises(ParamError, match="n_queries"):
        protocol.task_from_spec("kv(n_pairs=4, n_queries=5)")
    with pytest.raises(ParamError, match="does not exist"):
        protocol.task_from_spec("file(source=/no/such.jsonl)")
    with pytest.raises(ParamError, match="text file is required"):
        protocol.task_from_spec("text")


@pytest.mark.parametrize("spec", ["kv(n_contexts=2, n_pairs=10, n_queries=3)",
                                  "kv(n_contexts=1, n_pairs=10, n_queries=3, vocab=letters)",
                                  "passkey(n_contexts=2, words=120, n_needles=3)"])
def test_multi_turn_prompts_hold_the_earlier_reference_answers_and_multi_request_prompts_do_not(spec):
    task = protocol.task_from_spec(spec)
    fmt = task.format()
    sessions = task.sessions()
    assert sessions == task.sessions()  # deterministic
    for s in sessions:
        for i, turn in enumerate(s.turns):
            assert turn.answers[0] in s.context
            mt, mr = protocol.follow_up(s, fmt, i, "multi_turn"), protocol.follow_up(s, fmt, i, "multi_request")
            assert mr == fmt.query.replace("{input}", turn.input) and mt.endswith(mr)
            for earlier in s.turns[:i]:
                assert fmt.answer.replace("{answer}", earlier.answers[0]) in mt
                assert earlier.answers[0] not in mr
    assert len({t.answers[0] for s in sessions for t in s.turns}) > 1


def test_text_sessions_quote_unique_sentence_starts(tmp_path):
    text = " ".join(f"Sentence number {i} talks about item {i * 7} and then ends here." for i in range(200))
    path = tmp_path / "t.txt"
    path.write_text(text)
    task = protocol.task_from_spec(f"text(source={path}, n_contexts=2, context_words=300, n_queries=3, prefix_words=4)")
    for s in task.sessions():
        for t in s.turns:
            assert s.context.count(t.input) == 1 and f"{t.input} {t.answers[0]}" in s.context


def test_scoring_rules():
    assert protocol.score(" 48213. Remember", ("48213",), "first_word")
    assert not protocol.score(" 482134", ("48213",), "first_word")
    assert protocol.score(" It is Paris, France\nQuestion: x", ("paris",), "substring")
    assert not protocol.score(" no\nParis", ("Paris",), "substring")  # only the first line counts
    assert protocol.score(' the quick, brown fox" and', ("The quick brown",), "prefix")
    assert not protocol.score(" quick brown", ("the quick",), "prefix")
    assert protocol.score(" verde", ("green", "verde"), "substring")
