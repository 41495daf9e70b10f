"""Test tooling shipped with the SDK, so third-party packages test their extensions the way the SDK does.

Contract suites to subclass in your own test file (diffusers' ``SchedulerCommonTest`` pattern):
:mod:`.adapter_contract` (``AdapterContract``) and :mod:`.method_contract` (``MethodContract``). Test doubles:
:mod:`.toy` (synthetic episodes), :mod:`.prefix_transformer` (a VLA-shaped cached-prefix adapter),
:mod:`.point_mass` (an exact flow in the opposite time convention), :mod:`.tiny_lerobot` (tiny offline pi0 /
pi0.5 / SmolVLA checkpoints). Importing this package imports none of them (and so neither pytest nor lerobot).
"""
