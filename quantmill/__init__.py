"""quantmill: declarative quantize → evaluate → gate → publish pipelines for causal LMs."""

__version__ = "0.1.0"
