"""generate-images and inpaint end to end: real Prefect test server, real MLflow store, a tiny random text-to-image
folder written by save_t2i. The model is random, so the pictures are noise: what is tested is validation before
compute, the image cache (hits, misses, never another input's image), the runs, metrics and artifacts logged, and
masked-region fidelity (exact for a blending sampler on a pixel model, not for an inpainting denoiser)."""

from __future__ import annotations

import json
import math
import re

import mlflow
import pytest
from PIL import Image
from typer.testing import CliRunner

from attnflow.cli import app
from flows.generate_images import generate_images
from flows.inpaint import inpaint
from infra.settings import settings
from registry.specs import SpecError
from registry import UnknownComponentError
from tasks.diffusion import plan_images, plan_inpaint
from tests.helpers.t2i_folder import save_tiny_t2i

HOOK = "tests.helpers.t2i_folder:mean_red"


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory):
    return save_tiny_t2i(tmp_path_factory.mktemp("tiny-t2i") / "model")


def _plan(model, **kw):
    args = dict(prompts=["a red circle"], prompt_file=None, components=["baseline"], seeds=[0])
    return plan_images.fn(str(model), **{**args, **kw})


def test_bad_requests_fail_before_compute(t2i_dir, tmp_path, tiny_llama_dir):
    with pytest.raises(UnknownComponentError, match="unknown diffusion component 'sofpag'.*Did you mean softpag"):
        _plan(t2i_dir, components=["sofpag"])
    with pytest.raises(SpecError, match="vhr is a patch component; generate-images and inpaint run diffusion"):
        _plan(t2i_dir, components=["baseline", "softpag+vhr"])
    with pytest.raises(Exception, match="softpag.strength"):
        _plan(t2i_dir, components=["softpag(strength=3)"])
    with pytest.raises(ValueError, match="prompt file .*nope.txt does not exist"):
        _plan(t2i_dir, prompt_file=str(tmp_path / "nope.txt"))
    (tmp_path / "p.csv").write_text("prompt\na\n")
    with pytest.raises(ValueError, match="unknown format '.csv'"):
        _plan(t2i_dir, prompt_file=str(tmp_path / "p.csv"))
    (tmp_path / "p.jsonl").write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="line 1: needs a string field \"prompt\""):
        _plan(t2i_dir, prompt_file=str(tmp_path / "p.jsonl"))
    with pytest.raises(ValueError, match="no folder"):
        _plan(tmp_path / "missing-model")
    with pytest.raises(ValueError, match="is not a text-to-image model folder: missing unet/"):
        _plan(tiny_llama_dir)
    with pytest.raises(ValueError, match="metric 'bleu': not one of"):
        _plan(t2i_dir, metrics=["bleu"])
    with pytest.raises(ValueError, match="CLIP model .* is a 'llama' model, not 'clip'"):
        _plan(t2i_dir, clip_model=str(tiny_llama_dir))
    with pytest.raises(SpecError, match="component items repeat"):
        _plan(t2i_dir, components=["baseline", "baseline"])
    inp = dict(prompts=["a red circle"], prompt_file=None, components=["baseline"], seeds=[0])
    with pytest.raises(ValueError, match="inpaint input .*src.png does not exist"):
        plan_inpaint.fn(str(t2i_dir), **inp, images=[str(tmp_path / "src.png")], masks=[str(tmp_path / "m.png")])
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="2 source images and 3 masks"):
        plan_inpaint.fn(str(t2i_dir), **inp, images=[str(tmp_path / "a.png")] * 2, masks=[str(tmp_path / "a.png")] * 3)
    with pytest.raises(ValueError, match="give source images with masks, or scenes > 0"):
        plan_inpaint.fn(str(t2i_dir), **inp, images=[], masks=[], scenes=0)
    out = CliRunner().invoke(app, ["generate-images", "--model", str(t2i_dir), "--components", "vhr"])
    assert out.exit_code == 2, out.output
    assert "vhr is a patch component" in re.sub(r"\s+", " ", out.output)
    assert "Starting temporary server" not in out.output


def _images_dir():
    return settings().cache_dir / "images"


def test_generate_images_caches_and_logs(t2i_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue square left of the triangle\n")
    kw = dict(model=str(t2i_dir), prompt_file=str(tmp_path / "prompts.txt"),
              components=["baseline", "softpag(scale=2)"], seeds=[0, 1], steps=2, cfg_scale=2.0, maps=["circle"],
              metrics=["shapes", HOOK], experiment="gen-test")
    before = set(_images_dir().rglob("*.png")) if _images_dir().exists() else set()
    first = generate_images(**kw)
    assert len(first["images"]) == 2 * 2 * 2 and not any(r["cached"] for r in first["images"])
    assert len(set(_images_dir().rglob("*.png")) - before) == 8
    second = generate_images(**kw)
    assert all(r["cached"] for r in second["images"])
    assert [r["key"] for r in second["images"]] == [r["key"] for r in first["images"]]
    assert second["summary"]["baseline"]["n_cached"] == 4.0
    by = {(r["stack"], r["prompt_index"], r["seed"]): r for r in first["images"]}
    assert len({r["key"] for r in first["images"]}) == 8  # every input combination its own image
    assert _pixels(by[("baseline", 0, 0)]) != _pixels(by[("baseline", 0, 1)])  # seeds differ
    assert _pixels(by[("baseline", 0, 0)]) != _pixels(by[("softpag(scale=2.0)", 0, 0)])  # guidance acts
    assert by[("baseline", 0, 0)]["maps"] and by[("baseline", 1, 0)]["maps"] is None  # "circle" only in prompt 0
    r0 = by[("baseline", 0, 0)]["metrics"]
    assert r0["seconds_per_image"] > 0 and 0 <= r0["mean_red/mean_red"] <= 1 and r0["mean_red/words"] == 3.0
    # the shape detector scores prompts in its grammar ("a red circle") and skips the others
    assert "shapes/binding" in r0 and not any(k.startswith("shapes/") for k in by[("baseline", 1, 0)]["metrics"])

    # a changed setting is a miss, never another setting's image
    third = generate_images(**{**kw, "steps": 3, "components": ["baseline"], "seeds": [0]})
    assert not any(r["cached"] for r in third["images"])
    assert {r["key"] for r in third["images"]}.isdisjoint(r["key"] for r in first["images"])

    mlflow.set_tracking_uri(settings().tracking_uri)
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(experiment_names=["gen-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first["run_id"]]
    assert sorted(r.data.tags["attnflow.component_label"] for r in children) == ["baseline", "softpag(scale=2.0)"]
    for r in children:
        assert r.data.metrics["seconds_per_image"] > 0 and "mean_red/mean_red" in r.data.metrics
        arts = {a.path for a in client.list_artifacts(r.info.run_id, "images")}
        assert "images/p0_seed0.png" in arts and "images/p1_seed1.json" in arts
    assert {"grid.png", "maps_grid.png", "images.json", "summary.md", "comparison.md", "comparison.json"} <= \
        {a.path for a in client.list_artifacts(first["run_id"])}
    parent_metrics = client.get_run(first["run_id"]).data.metrics
    assert "baseline/seconds_per_image" in parent_metrics
    # the stacks compared over the two seeds: softpag's paired delta of a hook metric, equal to the hand-made one
    comp = first["comparison"]["stacks"]["softpag(scale=2.0)"]["mean_red/mean_red"]["delta"]
    want = [by[("softpag(scale=2.0)", p, s)]["metrics"]["mean_red/mean_red"] for s in (0, 1) for p in (0, 1)]
    base = [by[("baseline", p, s)]["metrics"]["mean_red/mean_red"] for s in (0, 1) for p in (0, 1)]
    per_seed = [(want[0] + want[1] - base[0] - base[1]) / 2, (want[2] + want[3] - base[2] - base[3]) / 2]
    assert comp["per_seed"] == pytest.approx(per_seed)
    assert parent_metrics["softpag.scale_2.0/delta/mean_red/mean_red"] == pytest.approx(comp["mean"])


def test_a_tampered_or_foreign_cache_entry_is_never_served(t2i_dir):
    from tasks import image_cache

    kw = dict(model=str(t2i_dir), prompts=["a red circle"], components=["baseline"], seeds=[7], steps=2,
              metrics=[], experiment="gen-cache-test")
    first = generate_images(**kw)["images"][0]
    other = generate_images(**{**kw, "seeds": [8]})["images"][0]
    # put seed 8's entry under seed 7's key: the stored inputs differ, so it is a miss and seed 7 is regenerated
    meta7 = first["png"].replace(".png", ".json")
    meta8 = json.loads(open(other["png"].replace(".png", ".json")).read())
    open(first["png"], "wb").write(open(other["png"], "rb").read())
    open(meta7, "w").write(json.dumps({**meta8}))
    again = generate_images(**kw)["images"][0]
    assert not again["cached"] and _pixels(again) == _pixels(first) != _pixels(other)
    # a changed PNG byte is a miss too
    data = bytearray(open(first["png"], "rb").read())
    data[-20] ^= 1
    open(first["png"], "wb").write(bytes(data))
    assert not generate_images(**kw)["images"][0]["cached"]
    assert image_cache.cache_key({"a": 1}) != image_cache.cache_key({"a": 2})


def test_inpaint_scenes_and_files(t2i_dir, tmp_path):
    from tests.helpers.t2i_folder import save_tiny_clip

    clip = save_tiny_clip(tmp_path / "clip")
    out = inpaint(model=str(t2i_dir), scenes=1, prompts=["a red circle"],
                  components=["baseline", "painta(factors=1)+rasg(eta=0.5, factors=1)"], seeds=[0], steps=2,
                  metrics=[], clip_model=str(clip), experiment="inpaint-test")
    rec, hd = out["images"]  # HD-Painter without a box fills the scene's mask
    assert hd["stack"] != rec["stack"] and hd["metrics"]["known_mse"] == 0.0
    assert 0.0 <= rec["metrics"]["clip_score"] <= 100.0
    assert rec["source"] == "scene0_0" and rec["metrics"]["known_mse"] == 0.0  # blending keeps the known region
    assert math.isinf(rec["metrics"]["known_psnr"])
    assert "known_psnr" not in mlflow.MlflowClient(settings().tracking_uri).get_run(
        [r for r in mlflow.search_runs(experiment_names=["inpaint-test"], output_format="list")
         if r.data.tags.get("mlflow.parentRunId") == out["run_id"]][0].info.run_id).data.metrics  # +inf not logged
    assert "baseline/clip_score" in mlflow.MlflowClient(settings().tracking_uri).get_run(out["run_id"]).data.metrics

    src, mask = Image.open(rec["source_image"]), Image.open(rec["source_mask"])
    src.save(tmp_path / "src.png")
    mask.save(tmp_path / "mask.png")
    inp_dir = save_tiny_t2i(tmp_path / "inpainting-model", inpainting=True)
    files = inpaint(model=str(inp_dir), images=[str(tmp_path / "src.png")], masks=[str(tmp_path / "mask.png")],
                    prompts=["a red circle"], components=["baseline", "softpag(scale=2)"], seeds=[0], steps=2,
                    metrics=[], experiment="inpaint-test")
    assert [r["source"] for r in files["images"]] == ["src", "src"]
    assert all(r["metrics"]["known_mse"] > 0 for r in files["images"])  # no blending: the denoiser redraws all
    arts = {a.path for a in mlflow.MlflowClient(settings().tracking_uri).list_artifacts(files["run_id"])}
    assert "grid.png" in arts


def _pixels(record) -> bytes:
    with Image.open(record["png"]) as img:
        return img.convert("RGB").tobytes()
