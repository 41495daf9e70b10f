"""trqam-sdk: Trust Region Q-Adjoint Matching for pretrained flow policies."""

__version__ = "0.1.0"
