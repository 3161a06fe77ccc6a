"""biomed: a research workbench for medical multimodal foundation models."""

__version__ = "0.1.0"
