"""Benchmark recipes shipped as package data (``trqam_sdk.recipes``): ``ogbench/<domain>.yaml``,
``robomimic/<task>.yaml``, ``metaworld/<name>.yaml``. Find them with :func:`trqam_sdk.benchmarks.recipes.recipe_dir`."""
