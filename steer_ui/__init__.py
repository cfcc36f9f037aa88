"""steer-ui: watch activation steering bend a reasoning model's chain of thought, token by token."""

__version__ = "0.1.0"
