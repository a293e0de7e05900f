"""tasks/image_log.summarize: NaN (a metric that does not apply to an image) is left out of a stack's mean, +inf
(an exactly reproduced known region's PSNR) makes the mean +inf."""

from __future__ import annotations

import math

from tasks.image_log import summarize


def test_nan_is_not_applicable_and_inf_propagates():
    def rec(stack, **m):
        return {"stack": stack, "cached": False, "metrics": m}

    out = summarize([rec("a", position=math.nan, binding=1.0, psnr=math.inf), rec("a", position=0.5, binding=0.0,
                     psnr=math.inf), rec("b", position=math.nan, binding=0.5, psnr=20.0)])
    assert out["a"]["position"] == 0.5 and out["a"]["binding"] == 0.5 and out["a"]["psnr"] == math.inf
    assert math.isnan(out["b"]["position"]) and out["b"]["psnr"] == 20.0 and out["b"]["n_images"] == 1.0
