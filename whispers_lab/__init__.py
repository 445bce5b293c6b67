"""whispers_lab: the workbench for the whispers staged rollout."""

__version__ = "0.1.0"
