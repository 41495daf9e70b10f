"""Methods: a config plus one short agent built from the shared math, registered by name."""

from trqam_sdk.methods.registry import FINETUNING, METHODS, get_method, method_names, register_method

__all__ = ["FINETUNING", "METHODS", "get_method", "method_names", "register_method"]
