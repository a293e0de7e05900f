"""uncertainty: how well SAR and its baselines predict a model's wrong answers on a QA file, AUROC / AUPRC with CIs.

validate -> prepare the QA file -> load the model -> generations cache (K samples + greedy per question, resumable)
-> similarity cache (token relevance, sentence similarity, entailment) -> score every method from the caches ->
correctness of the greedy answer -> AUROC / AUPRC with bootstrap CIs -> one MLflow run (metrics, table, bar chart).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import infra.settings  # noqa: F401  (environment defaults before Prefect reads its settings)
from prefect import flow
from pydantic import Field

from flows.params import BatchSize, Count, Dtype, Experiment, ModelName, Positive, Specs
from tasks.generations import build_generations, sampling_config
from tasks.models import load_model
from tasks.report import log_table
from tasks.runs import tracked_run
from tasks.similarity_cache import build_similarities
from tasks.tracking import publish_components
from tasks.uncertainty import log_uncertainty, needs_similarity, plan_methods, score_methods
from tasks.uncertainty_data import prepare_qa

DEFAULT_METHODS = ["predictive_entropy", "ln_predictive_entropy", "semantic_entropy", "lexical_similarity",
                   "token_sar", "sentence_sar", "sar"]
Unit = Annotated[float, Field(ge=0, le=1)]


@flow(name="uncertainty", log_prints=True)
def uncertainty(
    data: Annotated[str, Field(min_length=1)],
    model: ModelName = "demo",
    question_field: str = "question",
    answers_field: str = "answers",
    separator: str = ";",
    n_questions: Count = 100,
    methods: Specs = DEFAULT_METHODS,
    n_samples: Positive = 5,
    temperature: Annotated[float, Field(gt=0)] = 0.5,
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0,
    top_k: Count = 0,
    max_new_tokens: Positive = 32,
    stop: list[str] = ["\n"],  # noqa: B006 - a Prefect parameter default, never mutated
    template: str = "Answer the question in one short sentence.\nQuestion: {question}",
    chat: bool = True,
    seed: int = 0,
    similarity: str = "hidden",
    entailment: str = "rouge",
    correctness: Literal["rouge_l", "exact_match"] = "rouge_l",
    threshold: Unit = 0.5,
    n_bootstrap: Positive = 1000,
    batch_size: BatchSize = 4,
    shard_size: Positive = 32,
    experiment: Experiment = "uncertainty",
    dtype: Dtype = "float32",
    trust_remote_code: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Score the uncertainty of a model's sampled answers and how well each method predicts its errors.

    Args:
        data: QA file (.jsonl/.json/.csv/.parquet) or hf:<id>, one question and its reference answers per record.
        model: Hub id, local model directory, or "demo".
        question_field: Field holding the question.
        answers_field: Field holding the reference answers (a list, or text split on the separator).
        separator: Separator of the reference answers in a text field ("" = one reference).
        n_questions: Questions used (a fixed shuffle, then the first N; 0 = all).
        methods: Uncertainty method specs, e.g. "sar(t=0.001)" or "semantic_entropy(threshold=0.5)".
        n_samples: Sampled answers per question (K).
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass (1 = off).
        top_k: Top-k sampling (0 = off).
        max_new_tokens: Most tokens per answer.
        stop: Strings that end an answer (besides the EOS token).
        template: Prompt template with {question}.
        chat: Wrap the prompt in the tokenizer's chat template when it has one.
        seed: Sampling seed.
        similarity: Sentence similarity and token relevance: "hidden" (the model's own hidden states, one forward
            per answer token), "embedding" (relevance from input embeddings, no forward) or a cross-encoder hub
            id / path.
        entailment: Entailment for semantic entropy: "rouge" (ROUGE-L of the answers), "hidden", or an NLI model
            hub id / path.
        correctness: How the greedy answer is judged against the references.
        threshold: ROUGE-L at or above which the greedy answer counts as correct.
        n_bootstrap: Bootstrap resamples of the questions for the CIs.
        batch_size: Questions per generation batch.
        shard_size: Questions per cache shard (the unit of resumption).
        experiment: MLflow experiment name.
        dtype: float32, bfloat16 or float16.
        trust_remote_code: Allow model code from the hub (off by default).
        progress: Show progress bars.
    """
    # 1. Validate before compute: methods, sampling config, the QA file and its fields.
    specs = plan_methods(methods)
    config = sampling_config(n_samples, temperature, top_p, top_k, max_new_tokens, seed, stop, batch_size,
                             shard_size, template, chat)
    versions = publish_components([m.ref for m in specs])
    data_path = prepare_qa(data, question_field, answers_field, separator, n_questions)
    # 2. The model, then the generations cache (computes only missing shards) and, if a method needs it, the
    #    similarity cache beside it.
    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    gens = build_generations(loaded, data_path, config, progress=progress)
    sims = build_similarities(loaded, gens["dir"], similarity, entailment, progress=progress) \
        if needs_similarity(specs) else None
    # 3. Score every method from the caches, label the greedy answers, AUROC / AUPRC with CIs, one MLflow run.
    title = f"{loaded.name} on {data.rsplit('/', 1)[-1]} (n={gens['n_rows']}, K={n_samples})"
    with tracked_run(experiment, f"uncertainty {loaded.name}",
                     tags={"attnflow.model": loaded.name, "attnflow.kind": "uncertainty",
                           "attnflow.generations_key": gens["key"], "attnflow.components": ",".join(versions)},
                     params={"model": model, "data": data, "methods": [m.label for m in specs], **config,
                             "similarity": similarity, "entailment": entailment, "correctness": correctness,
                             "threshold": threshold, "n_questions": gens["n_rows"]}) as run:
        result = score_methods(specs, gens["dir"], sims["dir"] if sims else None, correctness, threshold,
                               n_bootstrap, seed)
        table = log_uncertainty(run, result, gens, title)
    log_table(table)
    print(f"MLflow run: {run} (experiment '{experiment}')")
    return {"table": table, "run_id": run, "experiment": experiment, "rows": result["rows"],
            "accuracy": result["accuracy"], "generations_dir": gens["dir"],
            "similarity_dir": sims["dir"] if sims else None}


if __name__ == "__main__":
    import sys

    uncertainty(data=sys.argv[1])
