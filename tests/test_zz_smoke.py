import pytest
def test_smoke(tiny_teacher, tiny_pipeline):
    print(tiny_teacher)
    import os
    for r, d, f in os.walk(tiny_pipeline.runs_dir / "tinyperch_probe"): print(r, f)
